"""One Redis client per process (connection pool), used for relayer nonces, locks and health."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

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


@contextmanager
def run_alone(name: str, *, timeout: float) -> Iterator[bool]:
    """Whether this caller may run ``name`` now: True for one holder at a time on every
    machine (a Redis lock that expires after ``timeout`` seconds should its holder die), False
    while another holds it. When Redis does not answer, True: the work is safe to repeat (its
    rows are the guard), and without Redis no message arrives to overlap with it anyway."""
    lock = get_redis().lock(f"autopay:run-alone:{name}", timeout=timeout)
    try:
        acquired = bool(lock.acquire(blocking=False))
    except redis.RedisError:
        logger.warning("%s: Redis unavailable, running without the lock", name)
        yield True
        return
    try:
        yield acquired
    finally:
        if acquired:
            try:
                lock.release()
            except redis.RedisError:
                logger.warning("%s: lock not released (it expires by itself)", name)
