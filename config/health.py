"""GET /health: database and Redis reachability, in the baseline's shape. No auth, no secrets."""

from __future__ import annotations

import logging

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


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    database = _database_ok()
    redis_up = _redis_ok()
    healthy = database and redis_up
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "database": "connected" if database else "disconnected",
        "redis": "connected" if redis_up else "disconnected",
        "timestamp": timezone.now().isoformat(),
        # Which Redis: "external" (REDIS_URL or the machine's server) or "embedded" (one that
        # bin/run started itself because none was reachable).
        "redisMode": settings.AUTOPAY_REDIS_MODE,
    }
    return JsonResponse(body, status=200 if healthy else 503)
