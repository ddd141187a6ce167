"""Periodic maintenance never runs twice at once: beat sends a recovery sweep every 10 s
whether or not the last one finished; a sweep that finds another running ends at once (a
Redis lock shared by every machine), so sweeps never take a second worker. Real Redis and
PostgreSQL; the task body is called in this process."""

from __future__ import annotations

import time
from typing import Any

import pytest

from autopay.tasks import recover_jobs
from core.redis import get_redis, run_alone

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_recovery_sweep_ends_at_once_while_another_runs(clean_redis: Any) -> None:
    with run_alone("recover_jobs", timeout=60) as first:
        assert first
        assert recover_jobs.run() == {"skipped": 1}
        with run_alone("recover_jobs", timeout=60) as second:
            assert not second, "one holder at a time"

    # The first one done, the next sweep runs (and finds nothing to do).
    summary = recover_jobs.run()
    assert "skipped" not in summary
    assert summary["leases_recovered"] == 0


def test_a_dead_sweeps_lock_expires_by_itself(clean_redis: Any) -> None:
    """A worker killed mid-sweep never releases its lock: it expires after its timeout."""
    lock = get_redis().lock("autopay:run-alone:recover_jobs", timeout=1)
    assert lock.acquire(blocking=False)  # and its holder "dies" without releasing it
    assert recover_jobs.run() == {"skipped": 1}
    clean_redis.pexpire("autopay:run-alone:recover_jobs", 1)
    time.sleep(0.05)
    assert "skipped" not in recover_jobs.run()
