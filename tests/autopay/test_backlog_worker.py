"""A backlog through a real `celery worker`, Redis, PostgreSQL and anvil, with the worker's own
outbox dispatcher looking for lost messages every 2 s: messages the worker has fetched and
holds (reserved behind its busy process, or waiting out a countdown) far longer than
AUTOPAY_STALE_WAITING_SECONDS are not taken for lost, and only a message deleted from the
broker is republished, once."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from web3 import Web3

from autopay.devtools.contracts import mint
from autopay.scan import scan_due
from jobs.models import Job
from jobs.queue import publish_jobs
from tests.conftest import wait_for
from tests.factories import PayerWalletFactory, SubscriptionFactory, new_address

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain, pytest.mark.worker]

STALE_SECONDS = 1
PAYMENTS = 60
# Retries a worker holds until their time, far past the stale age.
COUNTDOWN_SECONDS = 6.0
COUNTDOWN_JOBS = 3


def _due_jobs(user: Any, w3: Web3, token: str, deployer: Any, count: int) -> list[Job]:
    """``count`` due subscriptions paid from four funded wallets; their jobs, in order, made by
    the scan (published, as far as their rows say, now) but not sent to the broker."""
    wallets = [PayerWalletFactory.create(owner=user) for _ in range(4)]
    for wallet in wallets:
        mint(w3, token, deployer.key, str(wallet.address), 100 * 10**6)
    for index in range(count):
        wallet = wallets[index % len(wallets)]
        SubscriptionFactory.create(
            owner=user,
            wallet=wallet,
            payer_address=wallet.address,
            recipient_address=new_address(),
            token_address=token,
            amount=Decimal("1"),
        )
    assert scan_due(publish=False).jobs_created == count
    return list(Job.objects.order_by("created_at", "id"))


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
    jobs = _due_jobs(user, w3, token_address, deployer, PAYMENTS)
    published_at = {job.pk: job.enqueued_at for job in jobs}
    delayed, single = jobs[:COUNTDOWN_JOBS], jobs[COUNTDOWN_JOBS:]
    publish_jobs([job.pk for job in single])
    lost = single[-1]  # published last: the worker would take it last
    _delete_message(redis_client, lost)

    # One process, four messages reserved: three wait behind the one it is paying.
    worker = start_worker(
        extra_env={"AUTOPAY_STALE_WAITING_SECONDS": str(STALE_SECONDS), "LOG_LEVEL": "INFO"},
        args=["--prefetch-multiplier", "4"],
    )
    # Retries, published as the outbox publishes: the row marked published, then the message.
    retried_at = timezone.now()
    Job.objects.filter(pk__in=[job.pk for job in delayed]).update(enqueued_at=retried_at)
    published_at.update({job.pk: retried_at for job in delayed})
    publish_jobs([job.pk for job in delayed], countdown=COUNTDOWN_SECONDS)
    wait_for(
        lambda: not Job.objects.filter(status__in=Job.OPEN_STATUSES).exists(),
        timeout=180,
        interval=0.2,
    )

    done = {job.pk: job for job in Job.objects.all()}
    assert {job.status for job in done.values()} == {Job.Status.COMPLETED}, [
        (job.status, job.error_code) for job in done.values() if job.status != "completed"
    ]
    started = min(job.started_at for job in done.values())
    drained = max(job.finished_at for job in done.values()) - started
    assert drained > timedelta(seconds=5 * STALE_SECONDS), f"drained in {drained}: no backlog"
    # Never marked lost, never republished: each row still says when it was first published.
    kept = {pk: job.enqueued_at for pk, job in done.items() if pk != lost.pk}
    assert kept == {pk: at for pk, at in published_at.items() if pk != lost.pk}, worker.log()
    # The deleted message, and only it, was republished, once.
    assert done[lost.pk].enqueued_at > published_at[lost.pk]
    log = worker.log()
    assert re.findall(r"(\d+) job message\(s\) lost", log) == ["1"], log[-3000:]
    received = re.findall(r"Task autopay\.process_autopay_job\[[^\]]+\] received", log)
    assert len(received) == PAYMENTS, "one message per job, the republished one included"
    # The retries were held until their time, not republished at once.
    for job in delayed:
        assert done[job.pk].started_at >= retried_at + timedelta(seconds=COUNTDOWN_SECONDS)
