"""GET /health: database and Redis reachability, in the baseline's shape. No auth, no secrets."""

from __future__ import annotations

import logging
from collections.abc import Callable
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


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    database = _database_ok()
    redis_up = _redis_ok()
    problems = _payment_problems() if database else []
    healthy = database and redis_up and not problems
    sections: dict[str, dict[str, Any]] = {}
    for name, check in _sections.items():
        try:
            sections[name], section_healthy = check()
        except Exception:
            logger.warning("health: the %s check failed", name, exc_info=True)
            sections[name], section_healthy = {"status": "unknown"}, True
        healthy = healthy and section_healthy
    body: dict[str, object] = {
        "status": "healthy" if healthy else "unhealthy",
        "database": "connected" if database else "disconnected",
        "redis": "connected" if redis_up else "disconnected",
        "timestamp": timezone.now().isoformat(),
        # Which Redis: "external" (REDIS_URL or the machine's server) or "embedded" (one that
        # bin/run started itself because none was reachable).
        "redisMode": settings.AUTOPAY_REDIS_MODE,
        # The operator's payment configuration (keys, relayer, token): "misconfigured" with
        # the parts named (never a secret) stops payments, so health says so.
        "payments": "misconfigured" if problems else "ok",
    }
    if problems:
        body["paymentsProblems"] = problems
    # Each network on its own: an unreachable one delays only its own payments (its jobs
    # retry with rpc_unavailable), so it is reported here without failing the whole health.
    networks = _networks()
    if networks:
        body["networks"] = networks
    body.update(sections)
    return JsonResponse(body, status=200 if healthy else 503)
