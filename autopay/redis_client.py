"""One Redis client per process (connection pool), used for relayer nonces, locks and health."""

from __future__ import annotations

import threading

import redis
from django.conf import settings

_clients: dict[float, redis.Redis] = {}
_lock = threading.Lock()


def get_redis(*, timeout: float = 5.0) -> redis.Redis:
    with _lock:
        client = _clients.get(timeout)
        if client is None:
            client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
            )
            _clients[timeout] = client
        return client
