"""OpenAPI schema and the offline docs pages."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db

BASELINE_PATHS = [
    "/api/subscriptions/{id}/trigger-payment/",
    "/api/jobs/{id}/",
    "/api/jobs/subscription/{subscription_id}/",
    "/api/jobs/stats/",
    "/api/jobs/",
]


class AssetCollector(HTMLParser):
    """Every URL a page makes the browser load: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src", "iframe": "src"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


def assets_of(html: str) -> list[str]:
    collector = AssetCollector()
    collector.feed(html)
    return collector.urls


@pytest.fixture
def schema(client: Client) -> dict[str, Any]:
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200, response.content
    return dict(response.json())


def test_schema_is_openapi_3_with_the_baseline_paths(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "auto-pay API"
    for path in BASELINE_PATHS:
        assert path in schema["paths"], path
    trigger = schema["paths"]["/api/subscriptions/{id}/trigger-payment/"]
    assert set(trigger) >= {"post"}
    assert {"200", "400", "409"} <= set(trigger["post"]["responses"])


def test_schema_default_format_is_yaml_openapi(client: Client) -> None:
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert re.search(r"^openapi: 3\.", response.content.decode(), re.MULTILINE)
    assert "trigger-payment" in response.content.decode()


def test_schema_types_ids_and_amounts(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    subscription = components["SubscriptionOutput"]["properties"]
    assert subscription["amount"]["type"] == "string"
    assert subscription["id"]["type"] == "integer"
    detail = schema["paths"]["/api/subscriptions/{id}/"]["get"]
    (identifier,) = [param for param in detail["parameters"] if param["name"] == "id"]
    assert identifier["schema"]["type"] == "integer"
    trigger_data = components["TriggerPaymentData"]["properties"]
    assert trigger_data["jobId"]["type"] == "string"
    assert trigger_data["subscriptionId"]["type"] == "string"


def test_schema_operation_ids_are_unique(schema: dict[str, Any]) -> None:
    operation_ids = [
        operation["operationId"]
        for item in schema["paths"].values()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert len(operation_ids) == len(set(operation_ids))
    assert not [name for name in operation_ids if re.search(r"_\d+$", name)]


def test_schema_generates_without_warnings(tmp_path: Any) -> None:
    output = tmp_path / "schema.yaml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(output))
    assert "trigger-payment" in output.read_text()


def test_schema_lists_token_and_session_authentication(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert {"tokenAuth", "cookieAuth"} <= set(schemes)


@pytest.mark.parametrize(
    "url",
    [
        "/api/docs/",
        "/api/redoc/",
    ],
)
def test_docs_page_loads_only_local_assets(client: Client, url: str) -> None:
    response = client.get(url)

    assert response.status_code == 200
    html = response.content.decode()
    assets = assets_of(html)
    scripts = [asset for asset in assets if asset.endswith(".js")]
    assert scripts, "the docs page loads no script"
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), f"{url} loads {asset} from the internet"
        assert asset.startswith("/static/"), asset
        # The sidecar package ships the file: it is found without any network.
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a local static file"
    assert "/api/schema/" in html


def test_swagger_page_serves_the_sidecar_bundle(client: Client) -> None:
    html = client.get("/api/docs/").content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css" in html


# --- the schema says what the API answers --------------------------------------------------------

OPERATION_METHODS = ("get", "post", "put", "patch", "delete")


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in OPERATION_METHODS
    ]


def test_schema_documents_the_error_envelope(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["ApiError"]
    assert set(error["properties"]) == {"success", "error", "details", "code"}
    assert set(error["required"]) == {"success", "error"}


def test_every_operation_documents_its_errors(schema: dict[str, Any]) -> None:
    ref = "#/components/schemas/ApiError"
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        label = f"{method.upper()} {path}"
        # Database or Redis unreachable: every operation can answer 503.
        assert "503" in responses, label
        assert responses["503"]["content"]["application/json"]["schema"]["$ref"] == ref
        if any(parameter["in"] == "path" for parameter in operation.get("parameters", [])):
            assert "404" in responses, label
        if {} not in operation.get("security", [{}]):
            assert {"401", "403"} <= set(responses), label
        if "requestBody" in operation:
            assert {"400", "413", "415"} <= set(responses), label


def test_declared_error_responses_are_kept(schema: dict[str, Any]) -> None:
    trigger = schema["paths"]["/api/subscriptions/{id}/trigger-payment/"]["post"]["responses"]
    assert trigger["409"]["description"] == "Period in flight or paid"


def test_nullable_columns_are_nullable(schema: dict[str, Any]) -> None:
    """A subscription without a wallet answers ``"wallet": null``."""
    wallet = schema["components"]["schemas"]["SubscriptionOutput"]["properties"]["wallet"]
    assert wallet.get("nullable") is True


def _example(parameter: dict[str, Any]) -> str:
    kind = parameter.get("schema", {})
    if kind.get("type") == "integer":
        return "987654321"
    if kind.get("format") == "uuid" or parameter["name"] == "id":
        return "00000000-0000-4000-8000-000000000000"
    return "abcdef12"


@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "authenticated"])
def test_status_codes_answered_are_documented(
    schema: dict[str, Any], authenticated: bool, user: Any
) -> None:
    """Every operation, called anonymously and then on ids that do not exist with an empty
    body, answers a status code its schema lists."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.raise_request_exception = False
    if authenticated:
        client.force_authenticate(user)
    undocumented = []
    for path, method, operation in operations(schema):
        url = path
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                url = url.replace("{" + parameter["name"] + "}", _example(parameter))
        response = getattr(client, method)(url, {}, format="json")
        if str(response.status_code) not in operation["responses"]:
            undocumented.append((method.upper(), url, response.status_code))
    assert not undocumented, undocumented
