"""A backlog through a real `celery worker`, Redis, PostgreSQL and anvil, with the worker's own
outbox dispatcher looking for lost messages every 2 s: messages the worker has fetched and
holds (reserved behind its busy process, or waiting out a countdown) far longer than
AUTOPAY_STALE_WAITING_SECONDS are not taken for lost, and only a message deleted from the
broker is republished, once."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from web3 import Web3

from jobs.models import Job
from jobs.queue import publish_jobs
from tests.batching import scheduled_jobs
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain, pytest.mark.worker]

STALE_SECONDS = 1
PAYMENTS = 60
# Retries a worker holds until their time, far past the stale age (counted from before the
# worker starts, which takes a few seconds).
COUNTDOWN_SECONDS = 20.0
COUNTDOWN_JOBS = 3


def _delete_message(redis_client: Any, job: Job) -> None:
    """Delete the job's message from the broker's queue, as a Redis losing it would."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    for entry in redis_client.lrange(queue, 0, -1):
        if str(job.pk) in json.loads(entry)["headers"]["argsrepr"]:
            assert redis_client.lrem(queue, 1, entry) == 1
            return
    raise AssertionError(f"no message of job {job.pk} on the queue")


def test_a_backlog_held_by_a_busy_worker_is_not_republished_and_a_deleted_message_is_once(
    start_worker: Any,
    user: Any,
    w3: Web3,
    token_address: str,
    deployer: Any,
    engine_settings: Any,
    redis_client: Any,
) -> None:
    _wallets, job_ids = scheduled_jobs(user, w3, token_address, deployer, count=PAYMENTS, wallets=4)
    jobs = [Job.objects.get(pk=job_id) for job_id in job_ids]
    published_at = {job.pk: job.enqueued_at for job in jobs}
    delayed, single = jobs[:COUNTDOWN_JOBS], jobs[COUNTDOWN_JOBS:]
    publish_jobs([job.pk for job in single])
    lost = single[-1]  # published last: the worker would take it last
    _delete_message(redis_client, lost)

    # Retries, published as the outbox publishes: the row marked published, then the message.
    retried_at = timezone.now()
    Job.objects.filter(pk__in=[job.pk for job in delayed]).update(enqueued_at=retried_at)
    published_at.update({job.pk: retried_at for job in delayed})
    publish_jobs([job.pk for job in delayed], countdown=COUNTDOWN_SECONDS)

    # One process, four messages reserved: three wait behind the one it is paying.
    worker = start_worker(
        extra_env={"AUTOPAY_STALE_WAITING_SECONDS": str(STALE_SECONDS), "LOG_LEVEL": "INFO"},
        args=["--prefetch-multiplier", "4"],
    )
    ready_at = timezone.now()
    wait_for(
        lambda: not Job.objects.filter(status__in=Job.OPEN_STATUSES).exists(),
        timeout=180,
        interval=0.2,
    )

    done = {job.pk: job for job in Job.objects.all()}
    assert {job.status for job in done.values()} == {Job.Status.COMPLETED}, [
        (job.status, job.error_code) for job in done.values() if job.status != "completed"
    ]
    started = min(job.started_at for job in done.values() if job.started_at)
    drained = max(job.finished_at for job in done.values() if job.finished_at) - started
    assert drained > timedelta(seconds=5 * STALE_SECONDS), f"drained in {drained}: no backlog"
    # Never marked lost, never republished: each row still says when it was first published.
    kept = {pk: job.enqueued_at for pk, job in done.items() if pk != lost.pk}
    assert kept == {pk: at for pk, at in published_at.items() if pk != lost.pk}, worker.log()
    # The deleted message, and only it, was republished, once.
    republished, first = done[lost.pk].enqueued_at, published_at[lost.pk]
    assert republished and first and republished > first
    log = worker.log()
    assert re.findall(r"(\d+) job message\(s\) lost", log) == ["1"], log[-3000:]
    received = re.findall(r"Task autopay\.process_autopay_job\[[^\]]+\] received", log)
    assert len(received) == PAYMENTS, "one message per job, the republished one included"
    # The retries were held by the worker until their time, not republished at once.
    for job in delayed:
        claimed = done[job.pk].started_at
        assert claimed and claimed >= retried_at + timedelta(seconds=COUNTDOWN_SECONDS)
        assert claimed - ready_at > timedelta(seconds=5 * STALE_SECONDS), "held long enough"
