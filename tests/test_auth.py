"""The money boundary's limits: hashed API tokens, throttling, and the login lockout."""

from __future__ import annotations

import importlib
import io
import logging
import time
import uuid
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from django.apps import apps as django_apps
from django.conf import settings as django_settings
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from knox.crypto import hash_token
from knox.models import AuthToken
from rest_framework.test import APIClient

from autopay.api.tokens import issue_token
from autopay.devtools.anvil import free_port
from core import limits
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"  # tests.factories.UserFactory's


@pytest.fixture(autouse=True)
def _fresh_throttle_counters(settings: Any) -> None:
    # Users and addresses repeat across runs; a key prefix of this test's own starts at zero.
    settings.CACHES = {
        "default": {**django_settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}
    }


@pytest.fixture
def rates(settings: Any) -> Any:
    """Set throttle rates for this test (DRF's api_settings reload on the setting change)."""

    def set_rates(**scoped: str) -> None:
        current = settings.REST_FRAMEWORK
        settings.REST_FRAMEWORK = {
            **current,
            "DEFAULT_THROTTLE_RATES": {**current["DEFAULT_THROTTLE_RATES"], **scoped},
        }

    return set_rates


def token_client(token: str, **defaults: Any) -> APIClient:
    client = APIClient(**defaults)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def assert_envelope(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False and body["error"], body
    return dict(body)


# --- tokens ---------------------------------------------------------------------------------


def test_token_is_shown_once_and_the_database_keeps_only_its_digest(user: Any) -> None:
    response = APIClient().post(
        "/api/auth/tokens", {"username": user.username, "password": PASSWORD}, format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    token = body["token"]
    assert len(token) == 64
    assert body["prefix"] == token[:15]
    expiry = datetime.fromisoformat(body["expiry"])
    assert abs(expiry - (timezone.now() + timedelta(hours=720))) < timedelta(minutes=1)
    (row,) = AuthToken.objects.filter(user=user)
    assert row.digest == hash_token(token) != token
    assert row.token_key == token[:15]
    assert token not in {str(value) for value in vars(row).values()}

    client = token_client(token)
    listed = client.get("/api/auth/tokens")
    assert listed.status_code == 200
    (item,) = listed.json()["results"]
    assert item == {
        "prefix": token[:15],
        "created": body["created"],
        "expiry": body["expiry"],
        "current": True,
    }
    assert token not in listed.content.decode()
    assert row.digest not in listed.content.decode()
    assert client.get("/api/wallets/").status_code == 200, "the token authenticates"


def test_a_caller_with_a_token_or_a_session_gets_a_new_token(user: Any, api: APIClient) -> None:
    by_token = api.post("/api/auth/tokens")
    session = APIClient(enforce_csrf_checks=False)
    session.force_login(user)
    by_session = session.post("/api/auth/tokens")

    assert by_token.status_code == by_session.status_code == 201
    for response in (by_token, by_session):
        assert token_client(response.json()["token"]).get("/api/wallets/").status_code == 200
    assert AuthToken.objects.filter(user=user).count() == 3


def test_token_creation_refuses_wrong_or_missing_credentials(user: Any) -> None:
    client = APIClient()
    wrong = client.post(
        "/api/auth/tokens", {"username": user.username, "password": "nope"}, format="json"
    )
    missing = client.post("/api/auth/tokens", {}, format="json")
    half = client.post("/api/auth/tokens", {"username": user.username}, format="json")

    assert assert_envelope(wrong, 401)["error"] == "Wrong username or password."
    assert_envelope(missing, 401)
    assert_envelope(half, 400)
    assert not AuthToken.objects.exists()


def test_an_expired_token_answers_401_in_the_envelope(user: Any) -> None:
    row, token = issue_token(user, timedelta(hours=1))
    client = token_client(token)
    assert client.get("/api/wallets/").status_code == 200

    AuthToken.objects.filter(pk=row.pk).update(expiry=timezone.now() - timedelta(seconds=1))

    body = assert_envelope(client.get("/api/wallets/"), 401)
    assert body["error"] == "Invalid token."
    assert not AuthToken.objects.filter(pk=row.pk).exists(), "knox deletes it"


def test_token_lifetime_comes_from_the_settings(settings: Any, user: Any) -> None:
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_TTL": timedelta(hours=2)}
    two_hours = APIClient().post(
        "/api/auth/tokens", {"username": user.username, "password": PASSWORD}, format="json"
    )
    settings.REST_KNOX = {**settings.REST_KNOX, "TOKEN_TTL": None}
    forever = APIClient().post(
        "/api/auth/tokens", {"username": user.username, "password": PASSWORD}, format="json"
    )

    expiry = datetime.fromisoformat(two_hours.json()["expiry"])
    assert abs(expiry - (timezone.now() + timedelta(hours=2))) < timedelta(minutes=1)
    assert forever.json()["expiry"] is None


def test_list_shows_only_the_callers_live_tokens(user: Any, other_user: Any) -> None:
    _, mine = issue_token(user)
    issue_token(user)
    expired, _ = issue_token(user, timedelta(hours=1))
    AuthToken.objects.filter(pk=expired.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    issue_token(other_user)

    results = token_client(mine).get("/api/auth/tokens").json()["results"]

    assert len(results) == 2
    assert [item["current"] for item in results].count(True) == 1
    assert {item["prefix"] for item in results} == set(
        AuthToken.objects.filter(user=user)
        .exclude(pk=expired.pk)
        .values_list("token_key", flat=True)
    )
    assert_envelope(APIClient().get("/api/auth/tokens"), 401)


def test_revoke_a_token_by_its_prefix_and_another_users_prefix_is_404(
    user: Any, other_user: Any
) -> None:
    _, keep = issue_token(user)
    revoked_row, revoked = issue_token(user)
    other_row, other = issue_token(other_user)
    client = token_client(keep)

    assert_envelope(client.delete(f"/api/auth/tokens/{other_row.token_key}"), 404)
    assert token_client(other).get("/api/wallets/").status_code == 200, "still valid"
    assert client.delete(f"/api/auth/tokens/{revoked_row.token_key}").status_code == 204

    assert_envelope(token_client(revoked).get("/api/wallets/"), 401)
    assert client.get("/api/wallets/").status_code == 200
    assert_envelope(client.delete(f"/api/auth/tokens/{revoked_row.token_key}"), 404)


def test_logout_revokes_the_token_used_and_only_it(user: Any) -> None:
    _, used = issue_token(user)
    _, other = issue_token(user)
    client = token_client(used)

    assert client.post("/api/auth/logout").status_code == 204

    assert_envelope(client.get("/api/wallets/"), 401)
    assert token_client(other).get("/api/wallets/").status_code == 200
    assert_envelope(APIClient().post("/api/auth/logout"), 401)


def test_old_plain_keys_are_imported_hashed_and_deleted(user: Any) -> None:
    """The data migration: a rest_framework.authtoken key keeps working, stored as a digest."""
    old_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]  # 40 hex characters, as authtoken's
    created = timezone.now() - timedelta(days=3)
    with connection.cursor() as cursor:
        cursor.execute(
            'CREATE TABLE authtoken_token ("key" varchar(40) PRIMARY KEY, '
            '"created" timestamp with time zone NOT NULL, "user_id" integer NOT NULL)'
        )
        cursor.execute(
            "INSERT INTO authtoken_token VALUES (%s, %s, %s)", [old_key, created, user.pk]
        )
    migration = importlib.import_module("autopay.migrations.0002_import_authtoken_keys")

    migration.import_authtoken_keys(django_apps, SimpleNamespace(connection=connection))
    migration.import_authtoken_keys(django_apps, SimpleNamespace(connection=connection))

    (row,) = AuthToken.objects.filter(user=user)
    assert row.digest == hash_token(old_key)
    assert row.token_key == old_key[:15]
    assert row.created == created
    assert row.expiry is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM authtoken_token")
        assert cursor.fetchone()[0] == 0, "no plain key is left"
    assert token_client(old_key).get("/api/wallets/").status_code == 200


def test_create_token_command_prints_a_working_token_once(user: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("autopay_create_token", user.username, stdout=out, stderr=err)
    token = out.getvalue().strip()
    forever = io.StringIO()
    call_command(
        "autopay_create_token", user.username, "--ttl-hours", "0", stdout=forever, stderr=err
    )

    assert token_client(token).get("/api/wallets/").status_code == 200
    assert token[:15] in err.getvalue() and token not in err.getvalue()
    row = AuthToken.objects.get(digest=hash_token(token))
    assert row.expiry is not None
    assert AuthToken.objects.get(digest=hash_token(forever.getvalue().strip())).expiry is None
    with pytest.raises(CommandError):
        call_command("autopay_create_token", "nobody-such", stdout=out, stderr=err)


def test_admin_shows_no_usable_token(client: Client, staff_user: Any, user: Any) -> None:
    row, token = issue_token(user)
    client.force_login(staff_user)

    changelist = client.get("/admin/knox/authtoken/")
    change = client.get(f"/admin/knox/authtoken/{row.pk}/change/")

    assert changelist.status_code == change.status_code == 200
    for page in (changelist, change):
        assert token not in page.content.decode()
    assert client.get("/admin/authtoken/token/").status_code == 404, "no plain-key admin"


def test_schema_lists_the_token_endpoints(client: Client) -> None:
    paths = client.get("/api/schema/", {"format": "json"}).json()["paths"]

    assert {"post", "get"} <= set(paths["/api/auth/tokens/"])
    assert "delete" in paths["/api/auth/tokens/{prefix}/"]
    assert "post" in paths["/api/auth/logout"]


# --- throttling -----------------------------------------------------------------------------


def test_throttle_counters_live_in_redis(api: APIClient, user: Any) -> None:
    assert django_settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
    api.get("/api/wallets/")

    prefix = django_settings.CACHES["default"]["KEY_PREFIX"]
    keys = redis.Redis.from_url(django_settings.REDIS_URL).keys(f"{prefix}:*")
    assert any(key.decode().endswith(f"throttle_user_{user.pk}") for key in keys), keys


def test_anonymous_requests_are_throttled_with_retry_after(rates: Any) -> None:
    rates(anon="3/min")
    client = APIClient(REMOTE_ADDR="192.0.2.10")

    answers = [client.post("/api/auth/tokens", {}, format="json") for _ in range(4)]

    assert [answer.status_code for answer in answers] == [401, 401, 401, 429]
    body = assert_envelope(answers[-1], 429)
    assert "throttled" in body["error"].lower()
    assert 0 < int(answers[-1]["Retry-After"]) <= 60
    other_address = APIClient(REMOTE_ADDR="192.0.2.11")
    assert other_address.post("/api/auth/tokens", {}, format="json").status_code == 401


def test_users_are_throttled_per_user_with_retry_after(
    rates: Any, api: APIClient, other_api: APIClient
) -> None:
    rates(user="5/min")

    answers = [api.get("/api/wallets/") for _ in range(6)]

    assert [answer.status_code for answer in answers] == [200] * 5 + [429]
    assert_envelope(answers[-1], 429)
    assert 0 < int(answers[-1]["Retry-After"]) <= 60
    assert other_api.get("/api/wallets/").status_code == 200, "another user has their own count"


def test_the_eleventh_wallet_in_an_hour_is_refused(
    rates: Any, api: APIClient, other_api: APIClient
) -> None:
    rates(wallet_create="10/hour")  # the production default

    answers = [api.post("/api/wallets/", {"label": f"w{n}"}, format="json") for n in range(11)]

    assert [answer.status_code for answer in answers] == [201] * 10 + [429]
    assert_envelope(answers[-1], 429)
    assert 3500 < int(answers[-1]["Retry-After"]) <= 3600
    assert api.get("/api/wallets/").status_code == 200, "only creation has the tight limit"
    assert other_api.post("/api/wallets/", {"label": "x"}, format="json").status_code == 201


def test_throttling_fails_open_when_the_cache_is_unreachable(
    settings: Any, rates: Any, api: APIClient, caplog: Any, monkeypatch: Any
) -> None:
    rates(user="1/min", anon="1/min")
    settings.CACHES = {
        "default": {
            **django_settings.CACHES["default"],
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        }
    }
    monkeypatch.setattr(limits, "_last_warning", 0.0)
    caplog.set_level(logging.WARNING, logger="core.limits")

    started = time.monotonic()
    answers = [api.get("/api/wallets/") for _ in range(3)]
    anonymous = [APIClient().post("/api/auth/tokens", {}, format="json") for _ in range(3)]

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert [answer.status_code for answer in anonymous] == [401, 401, 401]
    assert time.monotonic() - started < 5
    assert "API throttling is off: the cache is unreachable" in caplog.text
    with pytest.raises(redis.exceptions.ConnectionError):
        cache.get("anything")


# --- login lockout --------------------------------------------------------------------------


def admin_login(client: Client, username: str, password: str) -> Any:
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


def test_admin_login_works_before_the_failure_limit(client: Client, staff_user: Any) -> None:
    for _ in range(4):
        assert admin_login(client, staff_user.username, "wrong").status_code == 200

    response = admin_login(client, staff_user.username, PASSWORD)

    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_admin_login_is_locked_after_five_failures_even_with_the_right_password(
    client: Client, staff_user: Any
) -> None:
    answers = [admin_login(client, staff_user.username, "wrong") for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200] * 4 + [429]

    locked = admin_login(client, staff_user.username, PASSWORD)

    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Sign-in locked" in page and "Try again in 15 minutes." in page
    assert locked["Retry-After"] == "900"
    assert client.get("/admin/").status_code == 302, "not logged in"
    elsewhere = Client(REMOTE_ADDR="198.51.100.7")
    assert admin_login(elsewhere, staff_user.username, PASSWORD).status_code == 302, (
        "the lock is per username and address"
    )


def test_api_password_logins_share_the_lockout(user: Any) -> None:
    client = APIClient()
    for _ in range(5):
        client.post(
            "/api/auth/tokens", {"username": user.username, "password": "wrong"}, format="json"
        )

    locked = client.post(
        "/api/auth/tokens", {"username": user.username, "password": PASSWORD}, format="json"
    )

    body = assert_envelope(locked, 429)
    assert "locked" in body["error"]
    assert locked["Retry-After"] == "900"
    assert not AuthToken.objects.filter(user=user).exists()


def test_other_users_are_not_locked(client: Client, staff_user: Any) -> None:
    other = UserFactory.create(is_staff=True)
    for _ in range(5):
        admin_login(client, staff_user.username, "wrong")

    assert admin_login(client, other.username, PASSWORD).status_code == 302
