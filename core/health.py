"""Health probes, no auth, no secrets:

* ``/health/live``: liveness (this process, the database, Redis), in the baseline's shape;
  what load balancers and orchestrators probe;
* ``/health/ready``: readiness of payments (keys, token, relayers, networks);
* ``/health``: both in one answer, as it always was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return True
    except Exception:
        logger.warning("health: database unreachable", exc_info=True)
        return False


def _redis_ok() -> bool:
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=settings.AUTOPAY_HEALTH_TIMEOUT_SECONDS,
            socket_connect_timeout=settings.AUTOPAY_HEALTH_TIMEOUT_SECONDS,
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        logger.warning("health: redis unreachable")
        return False


# Checks the apps add (AppConfig.ready): the engine's payment configuration. Each returns the
# problems it found, one short line each, never a secret.
_payment_checks: list[Callable[[], list[str]]] = []


def register_payment_check(check: Callable[[], list[str]]) -> None:
    """Add a payment-configuration check to /health (called from an AppConfig.ready())."""
    if check not in _payment_checks:
        _payment_checks.append(check)


# Per-network reports (AppConfig.ready): each configured network's RPC state and head block.
_network_reports: list[Callable[[], dict[str, dict[str, object]]]] = []


def register_network_report(report: Callable[[], dict[str, dict[str, object]]]) -> None:
    """Add each network's state to /health (called from an AppConfig.ready())."""
    if report not in _network_reports:
        _network_reports.append(report)


def _networks() -> dict[str, dict[str, object]]:
    networks: dict[str, dict[str, object]] = {}
    for report in _network_reports:
        try:
            networks.update(report())
        except Exception:
            logger.warning("health: network report failed", exc_info=True)
    return networks


# Further parts of the answer the apps add (AppConfig.ready): name -> a check returning the
# part's body and whether it is healthy (e.g. the engine's relayer funding).
_sections: dict[str, Callable[[], tuple[dict[str, Any], bool]]] = {}


def register_health_section(name: str, check: Callable[[], tuple[dict[str, Any], bool]]) -> None:
    """Add a part ``name`` to /health; an unhealthy part makes the answer 503."""
    _sections[name] = check


def _payment_problems() -> list[str]:
    problems: list[str] = []
    for check in _payment_checks:
        try:
            problems.extend(check())
        except Exception:
            logger.warning("health: payment configuration check failed", exc_info=True)
            problems.append("payments: the configuration could not be checked (see the web log)")
    return problems


@dataclass(frozen=True)
class Probe:
    """One probe's verdict and the JSON it answers (never a secret)."""

    healthy: bool
    body: dict[str, Any]


@dataclass(frozen=True)
class HealthReport:
    """Liveness (this process, the database, Redis: whether to keep serving the API) and
    readiness of payments (keys, token, relayers, networks: whether payments can be made)."""

    live: Probe
    ready: Probe


def _live() -> Probe:
    database = _database_ok()
    redis_up = _redis_ok()
    return Probe(
        database and redis_up,
        {
            "status": "healthy" if database and redis_up else "unhealthy",
            "database": "connected" if database else "disconnected",
            "redis": "connected" if redis_up else "disconnected",
            "timestamp": timezone.now().isoformat(),
            # Which Redis: "external" (REDIS_URL or the machine's server) or "embedded" (one
            # that bin/run started itself because none was reachable).
            "redisMode": settings.AUTOPAY_REDIS_MODE,
        },
    )


def _ready(*, database: bool) -> Probe:
    # The checks read the database (encrypted wallets); with it down they cannot run, and
    # liveness already says so.
    problems = _payment_problems() if database else []
    healthy = not problems
    sections: dict[str, dict[str, Any]] = {}
    for name, check in _sections.items():
        try:
            sections[name], section_healthy = check()
        except Exception:
            logger.warning("health: the %s check failed", name, exc_info=True)
            sections[name], section_healthy = {"status": "unknown"}, True
        healthy = healthy and section_healthy
    # The operator's payment configuration (keys, relayer, token): "misconfigured" with the
    # parts named (never a secret) stops payments, so readiness says so.
    body: dict[str, Any] = {"payments": "misconfigured" if problems else "ok"}
    if problems:
        body["paymentsProblems"] = problems
    # Each network on its own: an unreachable one delays only its own payments (its jobs
    # retry with rpc_unavailable), so it is reported without failing readiness.
    networks = _networks()
    if networks:
        body["networks"] = networks
    body.update(sections)
    return Probe(healthy, body)


def health_report() -> HealthReport:
    """Both probes at once (the dashboard shows them; the views below answer one each)."""
    live = _live()
    return HealthReport(live=live, ready=_ready(database=live.body["database"] == "connected"))


def _answer(healthy: bool, body: dict[str, Any]) -> JsonResponse:
    return JsonResponse(body, status=200 if healthy else 503)


@never_cache
@require_GET
def health_live(request: HttpRequest) -> JsonResponse:
    """GET /health/live: what a load balancer or an orchestrator's liveness probe asks. A dry
    relayer, a bad key or an RPC outage never fails it: the API still serves what it can."""
    live = _live()
    return _answer(live.healthy, live.body)


@never_cache
@require_GET
def health_ready(request: HttpRequest) -> JsonResponse:
    """GET /health/ready: can payments be made (keys, token, relayers, networks)?"""
    report = health_report()
    body = {
        "status": "ready" if report.ready.healthy and report.live.healthy else "not_ready",
        "database": report.live.body["database"],
        "redis": report.live.body["redis"],
        "timestamp": report.live.body["timestamp"],
        **report.ready.body,
    }
    return _answer(report.ready.healthy and report.live.healthy, body)


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """GET /health: both probes in one answer (the shape it always had, for people and
    monitors); 503 when either fails. Load balancers probe /health/live instead."""
    report = health_report()
    healthy = report.live.healthy and report.ready.healthy
    body = {**report.live.body, **report.ready.body}
    body["status"] = "healthy" if healthy else "unhealthy"
    return _answer(healthy, body)
