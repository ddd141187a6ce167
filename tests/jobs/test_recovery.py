"""jobs_recover on real PostgreSQL and Redis: expired leases come back, lost messages are
republished, a backlog is not mistaken for lost messages, poison jobs stop."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from jobs import services
from jobs.models import Job
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
    from jobs.queue import publish_jobs

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
