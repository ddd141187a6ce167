"""One Redis client per process (connection pool), used for relayer nonces, locks and health."""

from __future__ import annotations

import threading

import redis
from django.conf import settings

_clients: dict[tuple[str, float], redis.Redis] = {}
_lock = threading.Lock()


def get_redis(*, timeout: float = 5.0, url: str | None = None) -> redis.Redis:
    """A pooled client for ``url`` (default REDIS_URL), one per URL and timeout."""
    url = url or settings.REDIS_URL
    with _lock:
        client = _clients.get((url, timeout))
        if client is None:
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
            )
            _clients[(url, timeout)] = client
        return client
