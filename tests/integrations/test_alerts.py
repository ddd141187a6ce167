"""Alerts: a failure rate and a queue age beyond their thresholds (settings), shown on the
dashboard and exported as Prometheus gauges."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from jobs.models import Job
from subscriptions.services import payment_build
from tests.factories import SubscriptionFactory


def _jobs(owner: Any, *, completed: int, failed: int, waiting_for: timedelta | None = None) -> None:
    now = timezone.now()
    for index in range(completed + failed):
        subscription = SubscriptionFactory.create(owner=owner)
        payment = payment_build(subscription=subscription, index=0)
        payment.save()
        Job.objects.create(
            subscription=subscription,
            payment=payment,
            status=Job.Status.FAILED if index < failed else Job.Status.COMPLETED,
            error_code="insufficient_balance" if index < failed else "",
            finished_at=now - timedelta(minutes=5),
        )
    if waiting_for is not None:
        subscription = SubscriptionFactory.create(owner=owner)
        payment = payment_build(subscription=subscription, index=0)
        payment.save()
        job = Job.objects.create(subscription=subscription, payment=payment)
        Job.objects.filter(pk=job.pk).update(created_at=now - waiting_for)


def _metric(client: Client, name: str) -> str:
    text = client.get("/metrics").content.decode()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


@pytest.fixture
def operator(client: Client, staff_user: Any, settings: Any, clean_redis: Any) -> Client:
    settings.METRICS_PUBLIC = True
    settings.AUTOPAY_ALERT_FAILURE_RATE = 0.2
    settings.AUTOPAY_ALERT_MIN_FINISHED_JOBS = 10
    settings.AUTOPAY_ALERT_QUEUE_AGE_SECONDS = 600
    client.force_login(staff_user)
    return client


def test_a_high_failure_rate_and_an_old_queue_fire(operator: Client, user: Any) -> None:
    _jobs(user, completed=7, failed=3, waiting_for=timedelta(minutes=15))
    page = operator.get("/admin/dashboard/").content.decode()
    assert 'class="alert firing" id="alert-job_failure_rate"' in page
    assert "30.0 % of the 10 jobs finished in the last hour failed" in page
    assert 'class="alert firing" id="alert-queue_age"' in page

    assert 'autopay_alert_firing{alert="job_failure_rate"} 1.0' in _metric(
        operator, "autopay_alert_firing"
    )
    assert 'autopay_alert_firing{alert="queue_age"} 1.0' in _metric(
        operator, "autopay_alert_firing"
    )
    assert 'autopay_job_failure_ratio{window="1h"} 0.3' in _metric(
        operator, "autopay_job_failure_ratio"
    )
    assert 'autopay_alert_threshold{alert="queue_age"} 600.0' in _metric(
        operator, "autopay_alert_threshold"
    )
    age = float(_metric(operator, "autopay_oldest_waiting_job_age_seconds").split()[-1])
    assert 900 <= age < 1000


def test_quiet_below_the_thresholds(operator: Client, user: Any, settings: Any) -> None:
    # 3 of 9 failed: a third, but fewer finished than the minimum to judge a rate.
    _jobs(user, completed=6, failed=3, waiting_for=timedelta(minutes=5))
    page = operator.get("/admin/dashboard/").content.decode()
    assert 'class="alert" id="alert-job_failure_rate"' in page
    assert 'class="alert" id="alert-queue_age"' in page
    assert "FIRING" not in page
    assert 'autopay_alert_firing{alert="job_failure_rate"} 0.0' in _metric(
        operator, "autopay_alert_firing"
    )
    settings.AUTOPAY_ALERT_MIN_FINISHED_JOBS = 5
    assert 'autopay_alert_firing{alert="job_failure_rate"} 1.0' in _metric(
        operator, "autopay_alert_firing"
    )
