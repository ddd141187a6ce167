"""Every answer under /api/ that is an error is the JSON envelope, and none is a 500.

``{"success": false, "error": "<message>", "details"?}`` for 404 on unknown paths, 405, 413,
415, 429, 500 and 503, whether DRF (``core.api.exception_handler``), Django
(``handler400/403/404/500`` in ``config/urls.py``) or the /api/ middleware
(``core.middleware.ApiErrorMiddleware``) answers. The routes are read from the URL resolver,
so a new endpoint is covered without editing this file. Everything runs against the real
PostgreSQL and Redis of the suite; the few test-only views below exist to make a view raise.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, connection, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

import config.urls
from core.middleware import DATABASE_UNAVAILABLE, REDIS_UNAVAILABLE, unavailable_message
from subscriptions.webhooks.models import EventType, WebhookDelivery
from subscriptions.webhooks.services import webhook_endpoint_create, webhook_event_record
from tests.factories import PayerWalletFactory, SubscriptionFactory, failed_job

HUGE = "9" * 30  # far beyond PostgreSQL's bigint
BODY_METHODS = ("post", "put", "patch")
ALL_METHODS = ("get", "head", "options", "post", "put", "patch", "delete")


# --- test-only views (a URLconf of this module: the real routes plus these) ------------------


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Open(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]


class CrashView(_Open):
    def get(self, request: Request) -> Response:
        raise RuntimeError("a bug")


class AlwaysThrottled(BaseThrottle):
    def allow_request(self, request: Any, view: Any) -> bool:
        return False

    def wait(self) -> float:
        return 7.0


class ThrottledView(_Open):
    throttle_classes = [AlwaysThrottled]

    def get(self, request: Request) -> Response:
        return Response({"success": True})


class RedisDownView(_Open):
    """Talks to a Redis that is not there: a real redis.ConnectionError."""

    def get(self, request: Request) -> Response:
        client = redis.Redis.from_url(
            f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1.0
        )
        client.ping()
        return Response({"success": True})


class OutOfRangeView(_Open):
    """Hands PostgreSQL a number beyond bigint: a real DataError ("bigint out of range")."""

    def get(self, request: Request, number: str | None = None) -> Response:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT %s::bigint", [int(number or HUGE)])
        return Response({"success": True})


class BodyTooBigView(_Open):
    def post(self, request: Request) -> Response:
        raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")


def plain_crash(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug in a plain Django view")


def plain_database_down(request: HttpRequest) -> HttpResponse:
    """As a middleware or plain view would see it (outside DRF): answered by handler500."""
    raise OperationalError("connection refused")


def plain_body_too_big(request: HttpRequest) -> HttpResponse:
    raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")


urlpatterns = [
    path("api/test-errors/crash", CrashView.as_view()),
    path("api/test-errors/throttled", ThrottledView.as_view()),
    path("api/test-errors/redis-down", RedisDownView.as_view()),
    path("api/test-errors/out-of-range", OutOfRangeView.as_view()),
    path("api/test-errors/out-of-range/<str:number>", OutOfRangeView.as_view()),
    path("api/test-errors/too-big", BodyTooBigView.as_view()),
    path("api/test-errors/plain-crash", plain_crash),
    path("api/test-errors/plain-database-down", plain_database_down),
    path("api/test-errors/plain-too-big", plain_body_too_big),
    *config.urls.urlpatterns,
]
handler400 = config.urls.handler400
handler403 = config.urls.handler403
handler404 = config.urls.handler404
handler500 = config.urls.handler500

with_test_views = pytest.mark.urls(__name__)


# --- the routes, from the resolver -----------------------------------------------------------


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for pattern in patterns:
        text = prefix + str(pattern.pattern).lstrip("^").rstrip("$")
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, text)
        elif isinstance(pattern, URLPattern):
            yield text, pattern.name or ""


def api_routes() -> list[tuple[str, str]]:
    """(route template, name) of every /api/ route of config.urls, each once."""
    seen: dict[str, str] = {}
    for template, name in _walk(get_resolver("config.urls").url_patterns):
        template = template.replace("/?", "/")
        if template.startswith("api/") and template not in seen:
            seen[template] = name
    return sorted(seen.items())


_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)|<(?:\w+:)?(\w+)>")


def route_id(route: Any) -> str:
    return _GROUP.sub(lambda match: "{%s}" % (match[1] or match[2]), str(route))


ROUTES = api_routes()
ROUTE_IDS = [route_id(template) for template, _ in ROUTES]
ROUTES_WITH_IDS = [(template, name) for template, name in ROUTES if _GROUP.search(template)]
ROUTES_WITH_IDS_IDS = [route_id(template) for template, _ in ROUTES_WITH_IDS]


def fill(template: str, name: str, values: dict[str, str], huge: bool = False) -> str:
    """A concrete path: ids of objects of the requesting user, or numbers beyond bigint."""

    def value(match: re.Match[str]) -> str:
        kwarg = match.group(1) or match.group(2)
        if huge:
            return HUGE
        if kwarg == "pk":
            for prefix in ("webhook-endpoint", "webhook-delivery"):
                if name.startswith(prefix):
                    return values.get(prefix, "1")
            return values.get(name.split("-")[0], "1")
        return values.get(kwarg, "abc")

    return "/" + _GROUP.sub(value, template)


@pytest.fixture
def objects(user: Any) -> dict[str, str]:
    """One of everything, owned by ``user`` (the ``api`` client)."""
    wallet = PayerWalletFactory.create(owner=user)
    subscription = SubscriptionFactory.create(
        owner=user, wallet=wallet, payer_address=wallet.address
    )
    job = failed_job(subscription)
    endpoint, _ = webhook_endpoint_create(owner=user, url="https://93.184.215.14/hooks")
    webhook_event_record(owner_id=user.pk, type=EventType.JOB_FAILED, data={"jobId": "1"})
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    return {
        "webhook-endpoint": str(endpoint.pk),
        "endpoint_pk": str(endpoint.pk),
        "webhook-delivery": str(delivery.pk),
        "subscription": str(subscription.pk),
        "subscription_id": str(subscription.pk),
        "payment": str(job.payment_id),
        "job": str(job.pk),
        "wallet": str(wallet.pk),
    }


@pytest.fixture(autouse=True)
def _no_throttling(settings: Any) -> None:
    """Hundreds of requests per test: the rate limits are not what is tested here."""
    rest = dict(settings.REST_FRAMEWORK)
    rest["DEFAULT_THROTTLE_RATES"] = dict.fromkeys(rest.get("DEFAULT_THROTTLE_RATES") or {})
    settings.REST_FRAMEWORK = rest


@pytest.fixture
def tolerant_api(api: APIClient) -> APIClient:
    """The ``api`` client, answering 500s instead of raising the view's exception."""
    api.raise_request_exception = False
    return api


def assert_envelope(response: Any, http_status: int | None = None) -> dict[str, Any]:
    if http_status is not None:
        assert response.status_code == http_status, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), (
        response.status_code,
        response["Content-Type"],
        response.content[:300],
    )
    if response.request["REQUEST_METHOD"] == "HEAD":
        return {}
    body = response.json()
    assert body["success"] is False, body
    assert isinstance(body["error"], str) and body["error"].strip(), body
    assert set(body) <= {"success", "error", "details", "code"}, body
    return dict(body)


def assert_no_500(response: Any, label: str) -> None:
    """A 4xx, or a 503 when a dependency is down (the chain: no anvil runs for these tests)."""
    assert response.status_code < 500 or response.status_code == 503, (
        label,
        response.status_code,
        response.content[:500],
    )
    if response.status_code >= 400:
        assert_envelope(response)


def request(client: Client, method: str, url: str, **kwargs: Any) -> Any:
    return getattr(client, method)(url, **kwargs)


# --- 404 ---------------------------------------------------------------------------------------


pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "url", ["/api/nope", "/api/nope/", "/api/subscriptions/1/nope", "/api/v2/jobs", "/api"]
)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_unknown_api_path_answers_json_404(tolerant_api: APIClient, url: str, method: str) -> None:
    response = request(tolerant_api, method, url)
    if url == "/api" and response.status_code == 301:  # APPEND_SLASH: /api -> /api/
        return
    body = assert_envelope(response, 404)
    if body:
        assert body["error"] == "Not found."


def test_unknown_path_without_authentication_is_json_404_too(client: Client) -> None:
    assert_envelope(client.get("/api/nope"), 404)


def test_pages_outside_the_api_keep_django_html_404(client: Client, staff_user: Any) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")

    client.force_login(staff_user)
    response = client.get("/admin/nope/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert client.get("/admin/").status_code == 200


def test_unknown_ids_answer_json_404(tolerant_api: APIClient) -> None:
    for url in (
        "/api/subscriptions/123456789/",
        "/api/payments/abc",
        f"/api/jobs/{uuid.uuid4()}",
        "/api/jobs/not-a-uuid",
        "/api/wallets/123456789/balance",
    ):
        assert_envelope(tolerant_api.get(url), 404)


# --- every route: OPTIONS, unknown methods, every method, huge numbers -------------------------


@pytest.mark.parametrize(("template", "name"), ROUTES, ids=ROUTE_IDS)
def test_options_answers_on_every_route(
    tolerant_api: APIClient, objects: dict[str, str], template: str, name: str
) -> None:
    url = fill(template, name, objects)
    response = tolerant_api.options(url)
    assert response.status_code == 200, (url, response.status_code, response.content[:500])
    if response.content:
        assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
        assert response.json()


@pytest.mark.parametrize(("template", "name"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("method", ["FOO", "TRACE", "PROPFIND"])
def test_unknown_method_is_json_405_on_every_route(
    tolerant_api: APIClient, objects: dict[str, str], template: str, name: str, method: str
) -> None:
    url = fill(template, name, objects)
    response = tolerant_api.generic(method, url)
    body = assert_envelope(response, 405)
    assert method in body["error"]
    assert response.has_header("Allow")


@pytest.mark.parametrize(("template", "name"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_on_every_route_is_never_a_500(
    tolerant_api: APIClient, objects: dict[str, str], template: str, name: str, method: str
) -> None:
    url = fill(template, name, objects)
    response = (
        request(tolerant_api, method, url, format="json")
        if method in BODY_METHODS
        else (request(tolerant_api, method, url))
    )
    assert_no_500(response, f"{method.upper()} {url}")
    if response.status_code == 405:
        assert response.has_header("Allow")


@pytest.mark.parametrize(("template", "name"), ROUTES_WITH_IDS, ids=ROUTES_WITH_IDS_IDS)
def test_numbers_beyond_bigint_in_ids_are_never_a_500(
    tolerant_api: APIClient, objects: dict[str, str], template: str, name: str
) -> None:
    url = fill(template, name, objects, huge=True)
    for method in ALL_METHODS:
        response = request(tolerant_api, method, url)
        assert_no_500(response, f"{method.upper()} {url}")
        if method == "get" and response.status_code != 405:
            assert response.status_code in (400, 403, 404), (url, response.content[:300])


FILTERS = [
    "subscription",
    "status",
    "page",
    "days",
    "network",
    "auto_pay_enabled",
    "id",
    "pk",
    "wallet",
    "limit",
    "offset",
]


@pytest.mark.parametrize(("template", "name"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("number", [HUGE, f"-{HUGE}", "1e400", "NaN", "Infinity", "-1", "1.5"])
def test_numbers_beyond_range_in_filters_are_never_a_500(
    tolerant_api: APIClient, objects: dict[str, str], template: str, name: str, number: str
) -> None:
    url = fill(template, name, objects)
    for parameter in FILTERS:
        response = tolerant_api.get(url, {parameter: number})
        assert_no_500(response, f"GET {url}?{parameter}={number}")


def test_a_filter_beyond_bigint_is_an_empty_list_or_a_400(tolerant_api: APIClient) -> None:
    for url in ("/api/payments/", "/api/jobs/"):
        response = tolerant_api.get(url, {"subscription": HUGE})
        if response.status_code == 200:
            assert response.json()["count"] == 0
        else:
            assert_envelope(response, 400)


@with_test_views
def test_database_data_error_is_a_400(client: Client) -> None:
    """PostgreSQL itself refuses the value (DataError: bigint out of range)."""
    body = assert_envelope(client.get("/api/test-errors/out-of-range"), 400)
    assert "out of range" in body["error"]


@with_test_views
def test_database_data_error_for_an_id_in_the_path_is_a_404(client: Client) -> None:
    assert_envelope(client.get(f"/api/test-errors/out-of-range/{HUGE}"), 404)


# --- bodies: malformed JSON, wrong content types, too large -----------------------------------


BAD_BODIES = [
    ("application/json", "{not json"),
    ("application/json", '{"amount": '),
    ("application/json", "\xff\xfe"),
    ("application/json", "[]"),
    ("application/json", "null"),
    ("application/json", '"text"'),
    ("application/json", '{"amount": 1e400, "interval_count": 99999999999999999999999}'),
    ("application/json", '{"wallet": 99999999999999999999999, "label": {"a": 1}}'),
    ("text/plain", "hello"),
    ("application/xml", "<a/>"),
    ("application/x-www-form-urlencoded", "a=1&a=2&amount=%ff"),
    ("multipart/form-data; boundary=x", "--x\r\nnot multipart"),
    ("multipart/form-data", "no boundary"),
    ("", "body without a type"),
]


@pytest.mark.parametrize(("template", "name"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("method", BODY_METHODS)
def test_malformed_bodies_are_never_a_500(
    tolerant_api: APIClient, objects: dict[str, str], template: str, name: str, method: str
) -> None:
    url = fill(template, name, objects)
    for content_type, body in BAD_BODIES:
        response = tolerant_api.generic(method.upper(), url, body, content_type=content_type)
        assert_no_500(response, f"{method.upper()} {url} {content_type} {body!r}")


@pytest.mark.parametrize("url", ["/api/subscriptions/", "/api/wallets/"])
def test_malformed_json_is_a_400(tolerant_api: APIClient, url: str) -> None:
    body = assert_envelope(
        tolerant_api.generic("POST", url, "{not json", content_type="application/json"), 400
    )
    assert "JSON" in body["error"]


@pytest.mark.parametrize("url", ["/api/subscriptions/", "/api/wallets/"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "image/png"])
def test_wrong_content_type_is_a_415(tolerant_api: APIClient, url: str, content_type: str) -> None:
    response = tolerant_api.generic("POST", url, "x", content_type=content_type)
    body = assert_envelope(response, 415)
    assert content_type in body["error"]


@pytest.mark.parametrize("url", ["/api/subscriptions/", "/api/wallets/", "/api/nope"])
def test_body_over_the_limit_is_a_413(tolerant_api: APIClient, settings: Any, url: str) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = tolerant_api.generic(
        "POST", url, '{"label": "%s"}' % ("x" * 2000), content_type="application/json"
    )
    body = assert_envelope(response, 413)
    assert "1000 bytes" in body["error"]


def test_body_within_the_limit_is_read(tolerant_api: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = tolerant_api.post("/api/wallets/", {"label": "x" * 50}, format="json")
    assert response.status_code == 201, response.content


def test_the_default_limit_applies(tolerant_api: APIClient, settings: Any) -> None:
    big = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = tolerant_api.generic("POST", "/api/wallets/", big, content_type="application/json")
    assert_envelope(response, 413)


@with_test_views
@pytest.mark.parametrize("url", ["/api/test-errors/too-big", "/api/test-errors/plain-too-big"])
def test_request_data_too_big_raised_while_reading_is_a_413(client: Client, url: str) -> None:
    """Django raises RequestDataTooBig when it reads an oversized form: 413, DRF or not."""
    assert_envelope(client.post(url, {"a": "b"}), 413)


# --- 405, 403 and 429 ----------------------------------------------------------------------------


def test_method_not_allowed_on_an_api_view_is_json_405(tolerant_api: APIClient) -> None:
    response = tolerant_api.delete("/api/jobs/stats")
    body = assert_envelope(response, 405)
    assert body["error"] == 'Method "DELETE" not allowed.'
    assert "GET" in response["Allow"]


def test_method_not_allowed_on_a_plain_django_view_under_api_is_json_405(client: Client) -> None:
    """The session login page is a Django view: its 405 becomes the envelope too."""
    response = client.delete("/api/auth/login/")
    assert_envelope(response, 405)
    assert "POST" in response["Allow"]


def test_csrf_failure_under_api_is_json_403() -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post("/api/auth/login/", {"username": "a", "password": "b"})
    assert_envelope(response, 403)


@pytest.mark.parametrize("url", ["/api/schema/", "/api/docs/", "/api/redoc/"])
def test_schema_and_docs_pages_answer_json_to_other_methods(client: Client, url: str) -> None:
    options = client.options(url)
    assert options.status_code == 200
    assert options["Content-Type"].startswith("application/json")
    assert_envelope(client.post(url), 405)
    assert client.get(url).status_code == 200


def test_unauthenticated_is_json_401(client: Client) -> None:
    assert_envelope(client.get("/api/subscriptions/"), 401)


@with_test_views
def test_throttled_is_json_429_with_retry_after(client: Client) -> None:
    response = client.get("/api/test-errors/throttled")
    body = assert_envelope(response, 429)
    assert "7 seconds" in body["error"]
    assert response["Retry-After"] == "7"


# --- 500 ---------------------------------------------------------------------------------------


@with_test_views
@pytest.mark.parametrize("url", ["/api/test-errors/crash", "/api/test-errors/plain-crash"])
def test_a_crash_under_api_is_json_500(client: Client, url: str) -> None:
    client.raise_request_exception = False
    body = assert_envelope(client.get(url), 500)
    assert body["error"] == "Internal server error."
    assert "a bug" not in body["error"]


@with_test_views
def test_a_crash_still_reaches_the_test_client_and_the_logs(client: Client) -> None:
    """The handler answers JSON but does not swallow the error: Django logs it, the test
    client re-raises it."""
    with pytest.raises(RuntimeError, match="a bug"):
        client.get("/api/test-errors/crash")


# --- 503: database or Redis unreachable -----------------------------------------------------


@pytest.fixture
def cut_database(transactional_db: Any) -> Iterator[Callable[[], None]]:
    """Call it to point the default connection at a local port nothing listens on: every
    query then fails to connect (a real psycopg OperationalError) until the test ends."""
    default = connections["default"]
    saved_port = default.settings_dict["PORT"]

    def cut() -> None:
        default.close()
        default.settings_dict["PORT"] = closed_port()

    try:
        yield cut
    finally:
        default.close()
        default.settings_dict["PORT"] = saved_port


DATABASE_ROUTES = [
    ("get", "/api/subscriptions/"),
    ("get", "/api/subscriptions/1/"),
    ("post", "/api/subscriptions/1/trigger-payment"),
    ("get", "/api/payments/"),
    ("get", "/api/jobs/"),
    ("get", "/api/jobs/stats"),
    ("get", "/api/jobs/subscription/1"),
    ("get", f"/api/jobs/{uuid.UUID(int=1)}"),
    ("get", "/api/wallets/"),
    ("post", "/api/wallets/"),
    ("get", "/api/analytics"),
]


@pytest.mark.parametrize(("method", "url"), DATABASE_ROUTES)
def test_database_down_is_json_503_with_a_token(
    api: APIClient, cut_database: Callable[[], None], method: str, url: str
) -> None:
    """Authentication itself needs the database: 503, not 401 and not an HTML 500."""
    api.raise_request_exception = False
    cut_database()
    body = assert_envelope(request(api, method, url), 503)
    assert body["error"] == DATABASE_UNAVAILABLE


@pytest.mark.parametrize(("method", "url"), DATABASE_ROUTES)
def test_database_down_is_json_503_inside_the_view(
    user: Any, cut_database: Callable[[], None], method: str, url: str
) -> None:
    """Already authenticated (force_authenticate): the view's own query fails."""
    client = APIClient()
    client.force_authenticate(user)
    client.raise_request_exception = False
    cut_database()
    body = assert_envelope(request(client, method, url), 503)
    assert body["error"] == DATABASE_UNAVAILABLE


def test_database_down_with_a_session_is_json_503(
    user: Any, cut_database: Callable[[], None]
) -> None:
    """The session is read from the database (SessionAuthentication)."""
    client = APIClient()
    client.raise_request_exception = False
    client.force_login(user)
    cut_database()
    assert_envelope(client.get("/api/subscriptions/"), 503)


def test_connection_lost_is_json_503(api: APIClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake at the driver boundary: every new cursor raises InterfaceError, as psycopg does
    on a connection the server closed ("connection already closed")."""

    def lost(*args: Any, **kwargs: Any) -> Any:
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(connection, "create_cursor", lost)
    api.raise_request_exception = False
    body = assert_envelope(api.get("/api/subscriptions/"), 503)
    assert body["error"] == DATABASE_UNAVAILABLE


@with_test_views
def test_database_error_outside_drf_is_json_503(client: Client) -> None:
    client.raise_request_exception = False
    body = assert_envelope(client.get("/api/test-errors/plain-database-down"), 503)
    assert body["error"] == DATABASE_UNAVAILABLE


@with_test_views
def test_redis_down_is_json_503(client: Client) -> None:
    body = assert_envelope(client.get("/api/test-errors/redis-down"), 503)
    assert body["error"] == REDIS_UNAVAILABLE


def test_broker_and_redis_timeouts_count_as_unavailable() -> None:
    from kombu.exceptions import OperationalError as BrokerError

    assert unavailable_message(BrokerError("Error 111 connecting")) == REDIS_UNAVAILABLE
    assert unavailable_message(redis.exceptions.TimeoutError()) == REDIS_UNAVAILABLE
    assert unavailable_message(OperationalError()) == DATABASE_UNAVAILABLE
    assert unavailable_message(RuntimeError()) is None
