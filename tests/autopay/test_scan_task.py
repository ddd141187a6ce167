"""The beat task through a real worker with two processes: the scan and its helper share the
due rows, and every period is charged once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Count
from django.utils import timezone

from jobs.models import Job
from subscriptions.models import Payment
from tests.conftest import wait_for
from tests.factories import SubscriptionFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_scan_task_with_a_helper_scan_charges_each_period_once(start_worker: Any) -> None:
    from config.celery import app

    owner = UserFactory.create()
    anchor = timezone.now() - timedelta(minutes=1)
    SubscriptionFactory.create_batch(
        1500,
        owner=owner,
        billing_anchor=anchor,
        next_payment_due_at=anchor,
        next_period_due_at=anchor,
    )
    # No rail: the jobs fail at once without touching a chain; this test is about the scan.
    worker = start_worker(
        concurrency=2,
        extra_env={
            "AUTOPAY_PAYMENT_RAIL": "none",
            "AUTOPAY_SCAN_PARALLELISM": "2",
            "AUTOPAY_SCAN_BATCH_SIZE": "100",
        },
    )

    app.send_task("autopay.scan_due_subscriptions")
    wait_for(lambda: Payment.objects.count() == 1500, timeout=120, interval=0.5)
    wait_for(lambda: Job.objects.count() == 1500, timeout=60, interval=0.5)

    def scans_done() -> bool:
        return worker.log().count("autopay.scan_due_subscriptions[") >= 4  # 2 received, 2 done

    wait_for(scans_done, timeout=60, interval=0.5)
    log = worker.log()
    assert log.count("Task autopay.scan_due_subscriptions[") == 4, "the scan and one helper ran"
    per_subscription = (
        Payment.objects.values("subscription_id").annotate(n=Count("pk")).filter(n__gt=1)
    )
    assert not per_subscription.exists()
    assert not Job.objects.values("payment_id").annotate(n=Count("pk")).filter(n__gt=1).exists()
