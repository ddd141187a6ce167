"""The lease heartbeat: a job held by a live worker keeps its lease however long it runs; once
the worker stops (killed), the lease runs out and recovery takes the job back."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.utils import timezone

from jobs import services
from jobs.heartbeat import LeaseHeartbeat
from jobs.models import Job
from jobs.services import payment_trigger
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def short_lease(settings: Any) -> Any:
    settings.AUTOPAY_JOB_LEASE_SECONDS = 1
    settings.AUTOPAY_JOB_HEARTBEAT_SECONDS = 0.2
    return settings


def test_a_held_job_keeps_its_lease_and_loses_it_once_released(
    short_lease: Any, clean_redis: Any
) -> None:
    job = payment_trigger(subscription=SubscriptionFactory.create())
    assert services.job_claim(job_id=job.pk, worker_id="live") is not None
    heartbeat = LeaseHeartbeat()

    with heartbeat.holding(job_id=job.pk, worker_id="live"):
        time.sleep(2.5)  # more than two leases
        assert services.jobs_recover().leases_recovered == 0
        job.refresh_from_db()
        assert job.status == Job.Status.ACTIVE and job.lease_owner == "live"
        assert job.lease_expires_at is not None and job.lease_expires_at > timezone.now()

    time.sleep(1.5)  # released: nobody renews it now
    assert services.jobs_recover().leases_recovered == 1
    job.refresh_from_db()
    assert job.status == Job.Status.WAITING


def test_the_heartbeat_never_renews_a_lease_held_by_someone_else(short_lease: Any) -> None:
    job = payment_trigger(subscription=SubscriptionFactory.create())
    assert services.job_claim(job_id=job.pk, worker_id="new-owner") is not None
    before = Job.objects.get(pk=job.pk).lease_expires_at

    assert services.job_lease_renew(job_id=job.pk, worker_id="old-owner") is False
    assert Job.objects.get(pk=job.pk).lease_expires_at == before
    assert services.job_lease_renew(job_id=job.pk, worker_id="new-owner") is True
