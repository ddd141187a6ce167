"""Queue depth over time: the database keeps only the present (how many jobs are open now), so
the recovery task samples it, per network, into a small Redis sorted set that the dashboard
draws. A few hours of samples; a sample lost with Redis is a gap in a chart, nothing more.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db.models import Count

from core.redis import get_redis
from jobs.models import Job

logger = logging.getLogger(__name__)

QUEUE_HISTORY_KEY = "autopay:queue-depth"
QUEUE_HISTORY_HOURS = 6
# Short: the recovery task and the dashboard must not wait on a slow Redis.
REDIS_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class QueueSample:
    at: float  # Unix time
    open_jobs: dict[str, int]  # network -> waiting, delayed and active jobs


def _key() -> str:
    # One Redis shared by two deployments (or the test suite) keeps two histories.
    return f"{QUEUE_HISTORY_KEY}:{settings.CELERY_TASK_DEFAULT_QUEUE}"


def queue_depth_record(*, now: float | None = None) -> QueueSample:
    """Count the open jobs of each network now and keep the sample (older ones are trimmed)."""
    at = time.time() if now is None else now
    rows = (
        Job.objects.filter(status__in=Job.OPEN_STATUSES)
        .order_by()
        .values("payment__network")
        .annotate(total=Count("pk"))
    )
    sample = QueueSample(at=at, open_jobs={row["payment__network"]: row["total"] for row in rows})
    member = json.dumps({"at": at, "open": sample.open_jobs}, sort_keys=True)
    try:
        client = get_redis(timeout=REDIS_TIMEOUT_SECONDS)
        pipeline = client.pipeline()
        pipeline.zadd(_key(), {member: at})
        pipeline.zremrangebyscore(_key(), "-inf", at - QUEUE_HISTORY_HOURS * 3600)
        pipeline.execute()
    except redis.RedisError as exc:
        logger.warning("queue depth sample not stored: %s", exc)
    return sample


def queue_depth_history(*, hours: float = QUEUE_HISTORY_HOURS) -> list[QueueSample] | None:
    """The samples of the last ``hours``, oldest first; None when Redis cannot be read."""
    since = time.time() - hours * 3600
    try:
        members = get_redis(timeout=REDIS_TIMEOUT_SECONDS).zrangebyscore(_key(), since, "+inf")
    except redis.RedisError as exc:
        logger.warning("queue depth history unavailable: %s", exc)
        return None
    samples = []
    for member in members:
        entry = json.loads(member)
        samples.append(QueueSample(at=float(entry["at"]), open_jobs=dict(entry["open"])))
    return samples
