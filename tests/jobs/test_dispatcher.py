"""The transactional outbox: a job is queued when its row commits; the dispatcher publishes
what is due and has no message on the broker, so a broker outage delays work but never strands
it. Real PostgreSQL, the test Redis, and a private Redis server that the tests kill."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from config.celery import app
from jobs import services
from jobs.dispatcher import Dispatcher
from jobs.models import Job
from jobs.services import payment_trigger
from tests.factories import SubscriptionFactory
from tests.infra import RedisServer

pytestmark = pytest.mark.django_db(transaction=True)


def _queued(client: redis.Redis) -> int:
    return int(client.llen(settings.CELERY_TASK_DEFAULT_QUEUE))


@pytest.fixture
def unpublished_job(clean_redis: redis.Redis) -> Job:
    job = payment_trigger(subscription=SubscriptionFactory.create())
    clean_redis.delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    Job.objects.filter(pk=job.pk).update(enqueued_at=None)
    return job


def test_the_dispatcher_publishes_a_due_unpublished_job_once(
    unpublished_job: Job, clean_redis: redis.Redis
) -> None:
    assert services.jobs_dispatch() == 1
    assert _queued(clean_redis) == 1
    unpublished_job.refresh_from_db()
    assert unpublished_job.enqueued_at is not None

    assert services.jobs_dispatch() == 0, "published jobs are not published again"
    assert _queued(clean_redis) == 1


def test_a_delayed_job_is_published_when_its_backoff_ends(
    unpublished_job: Job, clean_redis: redis.Redis
) -> None:
    Job.objects.filter(pk=unpublished_job.pk).update(
        status=Job.Status.DELAYED, next_attempt_at=timezone.now() + timedelta(seconds=1)
    )

    assert services.jobs_dispatch() == 0
    time.sleep(1.05)
    assert services.jobs_dispatch() == 1
    assert _queued(clean_redis) == 1


def test_a_claimed_job_is_not_published(unpublished_job: Job, clean_redis: redis.Redis) -> None:
    assert services.job_claim(job_id=unpublished_job.pk, worker_id="w") is not None
    assert services.jobs_dispatch() == 0
    assert _queued(clean_redis) == 0


def test_retry_delays_have_jitter(settings: Any) -> None:
    settings.AUTOPAY_RETRY_BACKOFF_SECONDS = 2
    settings.AUTOPAY_RETRY_JITTER = 0.25
    first = [services.retry_countdown(attempts_made=1) for _ in range(200)]
    second = [services.retry_countdown(attempts_made=2) for _ in range(200)]

    assert all(2.0 <= value <= 2.5 for value in first)
    assert all(4.0 <= value <= 5.0 for value in second)
    # Spread out, not one synchronized instant.
    assert max(first) - min(first) > 0.3 and len({round(v, 3) for v in first}) > 100
    assert services.retry_countdown(attempts_made=10, cap=10) <= 12.5


# --- a broker that goes away ------------------------------------------------------------------


@pytest.fixture
def private_broker(tmp_path: Path, settings: Any) -> Iterator[RedisServer]:
    """This process publishes to a Redis server of the test's own, which the test may kill."""
    server = RedisServer(tmp_path / "redis").start()
    previous = app.conf.broker_url
    settings.CELERY_BROKER_URL = server.url()
    app.conf["broker_url"] = server.url()
    app._after_fork()  # type: ignore[attr-defined]  # drop pooled connections to the old broker
    try:
        yield server
    finally:
        server.stop()
        app.conf["broker_url"] = previous
        app._after_fork()  # type: ignore[attr-defined]


def test_a_trigger_while_the_broker_is_down_is_queued_and_published_on_its_return(
    private_broker: RedisServer, api: APIClient, user: Any
) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    private_broker.kill()

    started = time.monotonic()
    response = api.post(f"/api/subscriptions/{subscription.pk}/trigger-payment")
    took = time.monotonic() - started

    assert response.status_code == 200, response.content
    assert took < 3.0, f"a dead broker must not hold the request ({took:.1f}s)"
    job = Job.objects.get(pk=response.json()["data"]["jobId"])
    assert job.status == Job.Status.WAITING
    assert job.enqueued_at is None, "its message never left: the dispatcher owns it"
    dispatcher = Dispatcher(interval=0.05)
    assert dispatcher.step() == 0  # still down: nothing lost, the job stays unpublished
    assert Job.objects.get(pk=job.pk).enqueued_at is None

    private_broker.start()  # back, with its AOF
    assert dispatcher.step() == 1
    assert Job.objects.get(pk=job.pk).enqueued_at is not None
    queued = redis.Redis.from_url(private_broker.url()).llen(settings.CELERY_TASK_DEFAULT_QUEUE)
    assert queued == 1


def test_messages_lost_with_the_brokers_data_are_republished(
    private_broker: RedisServer, settings: Any
) -> None:
    settings.AUTOPAY_STALE_WAITING_SECONDS = 1
    jobs = [payment_trigger(subscription=SubscriptionFactory.create()) for _ in range(3)]
    client = redis.Redis.from_url(private_broker.url())
    assert client.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 3
    client.flushall()  # a Redis restarted without its data

    time.sleep(1.1)
    summary = services.jobs_recover()

    assert summary.republished == 3 and summary.published == 3
    assert client.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 3
    assert all(Job.objects.get(pk=job.pk).enqueued_at is not None for job in jobs)
