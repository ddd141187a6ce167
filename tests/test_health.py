"""GET /health: the baseline's shape, 503 when a dependency is down, no auth, no secrets."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from django.db import connections
from django.test import Client
from django.utils.dateparse import parse_datetime

from core.health import health_report

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("path", ["/health", "/health/"])
def test_health_is_healthy_without_authentication(client: Client, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {
        "status",
        "database",
        "redis",
        "timestamp",
        "redisMode",
        "payments",
        "networks",
        "relayers",
    }
    # Each configured network reported on its own (here none answers: still healthy).
    assert set(body["networks"]) == {"eip155:31337"}
    assert body["networks"]["eip155:31337"]["chainId"] == 31337
    # Whatever the default chain says (nothing answers there, or a funded dev relayer does).
    assert body["relayers"]["status"] in ("unknown", "ok")
    assert body["payments"] == "ok"
    assert body["redisMode"] in ("external", "embedded")
    assert body["status"] == "healthy"
    assert body["database"] == "connected"
    assert body["redis"] == "connected"
    timestamp = parse_datetime(body["timestamp"])
    assert timestamp is not None
    assert timestamp.tzinfo is not None
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


LIVE_KEYS = {"status", "database", "redis", "timestamp", "redisMode"}


@pytest.mark.parametrize("path", ["/health/live", "/health/live/"])
def test_liveness_is_the_baseline_shape(client: Client, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == LIVE_KEYS
    assert (body["status"], body["database"], body["redis"]) == (
        "healthy",
        "connected",
        "connected",
    )
    assert parse_datetime(body["timestamp"]) is not None
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_misconfigured_payments_fail_readiness_but_not_liveness(
    client: Client, settings: Any
) -> None:
    """A bad relayer key stops payments: /health/ready and /health say so (503, the part named),
    while /health/live, what a load balancer probes, keeps the API in service."""
    settings.RELAYER_PRIVATE_KEY = "0x1234"

    ready = client.get("/health/ready")
    assert ready.status_code == 503, ready.content
    body = ready.json()
    assert body["status"] == "not_ready"
    assert body["payments"] == "misconfigured"
    assert any(problem.startswith("relayer") for problem in body["paymentsProblems"]), body
    assert body["database"] == "connected"
    assert "eip155:31337" in body["networks"]

    assert client.get("/health").status_code == 503
    live = client.get("/health/live")
    assert live.status_code == 200, live.content
    assert set(live.json()) == LIVE_KEYS


def test_readiness_is_ready_when_payments_are_configured(client: Client) -> None:
    response = client.get("/health/ready")

    # Nothing answers at the default chain here: the relayer's balance is unknown, which does
    # not stop readiness (an RPC outage delays payments, the jobs retry).
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ready"
    assert body["payments"] == "ok"
    assert body["relayers"]["status"] in ("unknown", "ok")


def test_health_report_gives_both_probes(settings: Any) -> None:
    """The one function the dashboard reads: liveness and readiness, each with its verdict."""
    settings.RELAYER_PRIVATE_KEY = "0x1234"

    report = health_report()

    assert report.live.healthy is True
    assert set(report.live.body) == LIVE_KEYS
    assert report.ready.healthy is False
    assert report.ready.body["payments"] == "misconfigured"


def test_liveness_answers_503_when_redis_is_unreachable(client: Client, settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"

    response = client.get("/health/live")

    assert response.status_code == 503
    assert response.json()["redis"] == "disconnected"
    assert client.get("/health/ready").status_code == 503


def test_root_redirects_to_the_api_docs(client: Client) -> None:
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/api/docs/"
    docs = client.get(response["Location"])
    assert docs.status_code == 200
    # Served from this server: no CDN in the page.
    assert "cdn." not in docs.content.decode().lower()


def test_health_ignores_a_bad_token(client: Client) -> None:
    response = client.get("/health", HTTP_AUTHORIZATION="Token wrong")
    assert response.status_code == 200


def test_health_answers_503_when_redis_is_unreachable(client: Client, settings: Any) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"

    response = client.get("/health")

    assert response.status_code == 503, response.content
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["redis"] == "disconnected"
    assert body["database"] == "connected"
    assert parse_datetime(body["timestamp"]) is not None


def test_health_recovers_when_redis_is_back(client: Client, settings: Any) -> None:
    reachable = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    assert client.get("/health").status_code == 503
    settings.REDIS_URL = reachable
    assert client.get("/health").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_health_answers_503_when_the_database_is_unreachable(client: Client) -> None:
    database = connections["default"]
    original_port = database.settings_dict["PORT"]
    database.close()
    database.settings_dict["PORT"] = str(closed_port())
    try:
        response = client.get("/health")
    finally:
        database.close()
        database.settings_dict["PORT"] = original_port

    assert response.status_code == 503, response.content
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["database"] == "disconnected"
    assert body["redis"] == "connected"
    # And back once the database is reachable again.
    assert client.get("/health").status_code == 200


def test_health_never_shows_secrets(
    client: Client, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    password = "hunter2-redis-password"
    settings.REDIS_URL = f"redis://:{password}@127.0.0.1:{closed_port()}/0"

    response = client.get("/health")

    text = response.content.decode()
    assert response.status_code == 503
    for secret in (password, settings.SECRET_KEY, settings.AUTOPAY_KEY_ENCRYPTION_KEY):
        assert secret
        assert secret not in text
        assert secret not in caplog.text
    assert "redis://" not in text
    assert "127.0.0.1" not in text


def test_health_refuses_writes(client: Client) -> None:
    assert client.post("/health").status_code == 405


def test_log_lines_parse_as_key_value_and_json() -> None:
    """LOG_FORMAT=keyvalue|json: one parseable line per record, secrets still redacted."""
    import json
    import logging
    import shlex

    from autopay.logging import JsonFormatter, KeyValueFormatter, RedactSecretsFilter

    record = logging.LogRecord(
        "autopay.engine", logging.INFO, __file__, 1, "job %s done; private_key=%s", None, None
    )
    record.args = ("abc", "0x" + "ab" * 32)
    RedactSecretsFilter().filter(record)
    pairs = dict(part.split("=", 1) for part in shlex.split(KeyValueFormatter().format(record)))
    assert pairs["level"] == "INFO"
    assert pairs["logger"] == "autopay.engine"
    assert pairs["msg"] == "job abc done; private_key=[REDACTED]"
    parsed = json.loads(JsonFormatter().format(record))
    assert parsed["msg"] == pairs["msg"]
    assert "\n" not in JsonFormatter().format(record)
