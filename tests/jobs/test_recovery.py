"""jobs_recover on real PostgreSQL and Redis: expired leases come back, lost messages are
republished, a backlog is not mistaken for lost messages, poison jobs stop."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from config.celery import app
from jobs import services
from jobs.models import Job
from jobs.queue import publish_jobs, publish_scheduled_jobs
from jobs.services import payment_trigger
from subscriptions.models import Payment, Subscription
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _queued(redis_client: Any) -> int:
    return int(redis_client.llen(settings.CELERY_TASK_DEFAULT_QUEUE))


@pytest.fixture
def job(clean_redis: Any) -> Job:
    subscription = SubscriptionFactory.create()
    created = payment_trigger(subscription=subscription)
    clean_redis.delete(settings.CELERY_TASK_DEFAULT_QUEUE)  # the trigger's own message
    return created


def _claim_and_expire(job: Job) -> None:
    assert services.job_claim(job_id=job.pk, worker_id="dead-worker") is not None
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_an_expired_lease_returns_the_job_and_its_attempt(job: Job, clean_redis: Any) -> None:
    _claim_and_expire(job)

    summary = services.jobs_recover()

    job.refresh_from_db()
    assert summary.leases_recovered == 1
    assert job.status == Job.Status.WAITING
    assert job.attempts_made == 0, "a crash is not a payment attempt"
    assert job.recoveries == 1
    assert _queued(clean_redis) == 1


def test_a_live_lease_is_left_alone(job: Job, clean_redis: Any) -> None:
    assert services.job_claim(job_id=job.pk, worker_id="busy-worker") is not None

    assert services.jobs_recover().leases_recovered == 0
    job.refresh_from_db()
    assert job.status == Job.Status.ACTIVE
    assert _queued(clean_redis) == 0


def test_a_waiting_job_whose_message_was_lost_is_republished(job: Job, clean_redis: Any) -> None:
    old = timezone.now() - timedelta(seconds=settings.AUTOPAY_STALE_WAITING_SECONDS + 5)
    Job.objects.filter(pk=job.pk).update(enqueued_at=old)

    summary = services.jobs_recover()

    assert summary.republished == 1
    assert _queued(clean_redis) == 1


def test_a_backlog_is_not_taken_for_lost_messages(job: Job, clean_redis: Any) -> None:
    publish_jobs([job.pk])  # its message is still queued behind others
    old = timezone.now() - timedelta(seconds=settings.AUTOPAY_STALE_WAITING_SECONDS + 5)
    Job.objects.filter(pk=job.pk).update(enqueued_at=old)

    summary = services.jobs_recover()

    assert summary.republished == 0
    assert _queued(clean_redis) == 1


def test_a_job_that_keeps_killing_its_worker_fails_without_blaming_the_customer(
    job: Job, clean_redis: Any
) -> None:
    for _ in range(3):
        _claim_and_expire(job)
        services.jobs_recover()
    _claim_and_expire(job)

    summary = services.jobs_recover()

    job.refresh_from_db()
    assert summary.failed == 1
    assert job.status == Job.Status.FAILED
    assert job.error_code == "worker_lost"
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.FAILED
    assert payment.error_code == "worker_lost"
    # Not the customer's doing: the subscription is not moved to dunning; the operator retries
    # the period once the cause is understood (autopay_retry_failed --error-code worker_lost).
    assert Subscription.objects.get(pk=job.subscription_id).status == Subscription.Status.ACTIVE


# --- what the broker holds: lists, and messages workers have fetched ---------------------------


def _stale(*jobs: Job) -> None:
    """Published longer ago than AUTOPAY_STALE_WAITING_SECONDS and still unclaimed."""
    old = timezone.now() - timedelta(seconds=settings.AUTOPAY_STALE_WAITING_SECONDS + 5)
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(enqueued_at=old)


def _enqueued_at(job: Job) -> Any:
    return Job.objects.get(pk=job.pk).enqueued_at


def _unpublished_jobs(count: int, redis_client: Any) -> list[Job]:
    """Jobs whose trigger's own message is taken away again: the test publishes them."""
    jobs = [payment_trigger(subscription=SubscriptionFactory.create()) for _ in range(count)]
    redis_client.delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    return jobs


@pytest.fixture
def consumer(clean_redis: Any) -> Iterator[Callable[[], Any]]:
    """Takes the next message off the queue as a worker does, and never acknowledges it: kombu
    keeps it as unacknowledged on the broker (reserved, running, or held until its countdown),
    as for a busy worker's prefetched messages."""
    connection = app.connection_for_read()
    channel: Any = connection.default_channel  # kombu's virtual channel (typed as StdChannel)

    def fetch() -> Any:
        message = channel.basic_get(settings.CELERY_TASK_DEFAULT_QUEUE, no_ack=False)
        assert message is not None, "nothing to fetch"
        return message

    try:
        yield fetch
    finally:
        connection.release()


def test_a_just_published_job_whose_message_is_not_on_the_broker_is_left_alone(
    job: Job, clean_redis: Any
) -> None:
    # Published a moment ago (its message may still be on its way, or already taken): too
    # early to call it lost, whatever the broker holds.
    published = _enqueued_at(job)
    assert published is not None and _queued(clean_redis) == 0

    summary = services.jobs_recover()

    assert (summary.republished, summary.published) == (0, 0)
    assert _enqueued_at(job) == published
    assert _queued(clean_redis) == 0


@override_settings(AUTOPAY_SETTLEMENT_BATCH_SIZE=3)
def test_messages_fetched_by_workers_are_not_lost(
    consumer: Callable[[], Any], clean_redis: Any
) -> None:
    single, *batched, delayed = _unpublished_jobs(5, clean_redis)
    publish_jobs([single.pk])
    publish_scheduled_jobs([job.pk for job in batched])  # one batch message of three
    publish_jobs([delayed.pk], countdown=600)  # a retry a worker holds until its time
    for _ in range(3):
        consumer()
    assert _queued(clean_redis) == 0
    _stale(single, *batched, delayed)
    before = {job.pk: _enqueued_at(job) for job in (single, *batched, delayed)}

    summary = services.jobs_recover()

    assert (summary.republished, summary.published) == (0, 0)
    assert {job.pk: _enqueued_at(job) for job in (single, *batched, delayed)} == before
    assert _queued(clean_redis) == 0


def test_only_the_message_deleted_from_the_broker_is_republished_once(
    consumer: Callable[[], Any], clean_redis: Any
) -> None:
    fetched, queued, deleted = _unpublished_jobs(3, clean_redis)
    publish_jobs([fetched.pk, queued.pk, deleted.pk])  # in this order: fetched first
    consumer()
    # Deleted from the broker by hand: the one message really lost.
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    for entry in clean_redis.lrange(queue, 0, -1):
        if str(deleted.pk) in json.loads(entry)["headers"]["argsrepr"]:
            assert clean_redis.lrem(queue, 1, entry) == 1
    assert _queued(clean_redis) == 1
    _stale(fetched, queued, deleted)
    before = {job.pk: _enqueued_at(job) for job in (fetched, queued, deleted)}

    summary = services.jobs_recover()

    assert (summary.republished, summary.published) == (1, 1)
    assert _enqueued_at(deleted) > before[deleted.pk], "republished now"
    assert {job.pk: _enqueued_at(job) for job in (fetched, queued)} == {
        job.pk: before[job.pk] for job in (fetched, queued)
    }
    assert _queued(clean_redis) == 2
    _stale(deleted)  # long after its republish, its new message still waits: not lost again
    assert services.jobs_recover().republished == 0
    assert _queued(clean_redis) == 2


@override_settings(CELERY_TASK_TIME_LIMIT=1)
def test_a_message_fetched_by_a_worker_that_died_is_republished(
    consumer: Callable[[], Any], clean_redis: Any
) -> None:
    # A worker fetched it and never came back (killed before it started the job, so no lease
    # brings the job back): kombu would give the message back only after its visibility
    # timeout, an hour. Held longer than its tasks' time limit allows, it is taken for lost.
    (job,) = _unpublished_jobs(1, clean_redis)
    publish_jobs([job.pk])
    consumer()
    _stale(job)
    assert services.jobs_recover().republished == 0, "within the time limit: still held"

    time.sleep(1.1)
    summary = services.jobs_recover()

    assert (summary.republished, summary.published) == (1, 1)
    assert _queued(clean_redis) == 1
