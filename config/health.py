"""GET /health: database and Redis reachability, in the baseline's shape. No auth, no secrets."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from autopay.configuration import configuration_problems

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
    import redis

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


def _payment_problems() -> list[str]:
    try:
        return configuration_problems()
    except Exception:
        logger.warning("health: payment configuration check failed", exc_info=True)
        return ["payments: the configuration could not be checked (see the web log)"]


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    database = _database_ok()
    redis_up = _redis_ok()
    problems = _payment_problems() if database else []
    healthy = database and redis_up and not problems
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
    return JsonResponse(body, status=200 if healthy else 503)
