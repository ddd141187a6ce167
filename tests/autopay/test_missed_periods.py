"""Periods owed because the engine was down: at most AUTOPAY_MAX_MISSED_PERIODS are charged
(oldest first); older ones are recorded as waived and never charged, by the scan and by a
manual trigger alike."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from autopay.scan import scan_due
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions import periods, services
from subscriptions.models import Payment, Subscription
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)


def test_split_keeps_the_newest_periods() -> None:
    waived, charged = periods.missed_period_split(next_index=2, current_index=9, max_missed=3)
    assert (list(waived), list(charged)) == ([2, 3, 4, 5, 6], [7, 8, 9])
    waived, charged = periods.missed_period_split(next_index=2, current_index=3, max_missed=3)
    assert (list(waived), list(charged)) == ([], [2, 3])


def test_scan_charges_the_newest_missed_periods_and_waives_the_rest(
    user: Any, settings: Any, api: APIClient
) -> None:
    settings.AUTOPAY_MAX_MISSED_PERIODS = 3
    now = timezone.now()
    anchor = now - 9 * DAY - timedelta(hours=1)
    subscription = SubscriptionFactory.create(
        owner=user, billing_anchor=anchor, interval_unit=Subscription.IntervalUnit.DAY
    )

    summary = scan_due(now=now, publish=False)

    payments = list(Payment.objects.filter(subscription=subscription).order_by("period_index"))
    assert [p.period_index for p in payments] == list(range(10))
    assert [p.status for p in payments] == [Payment.Status.WAIVED] * 7 + [
        Payment.Status.PENDING
    ] * 3
    # Jobs only for the charged ones, oldest first; nothing will ever charge a waived period.
    charged = Job.objects.filter(subscription=subscription).order_by("created_at")
    assert sorted(job.payment.period_index for job in charged) == [7, 8, 9]
    assert summary.jobs_created == 3
    subscription.refresh_from_db()
    assert subscription.next_period_index == 10
    # Once the oldest charged period is paid, what is owed next is the period after it, not
    # a waived one.
    services.payment_record_success(
        payment=payments[7], transaction_hash="0x" + "ab" * 32, block_number=1
    )
    subscription.refresh_from_db()
    assert subscription.next_payment_due_at == payments[8].period_start
    assert scan_due(now=now, publish=False).payments_created == 0

    # Visible in the API.
    listed = api.get(f"/api/payments/?subscription={subscription.pk}&status=waived").json()
    assert listed["count"] == 7


def test_manual_trigger_waives_like_the_scan(user: Any, settings: Any) -> None:
    settings.AUTOPAY_MAX_MISSED_PERIODS = 2
    now = timezone.now()
    subscription = SubscriptionFactory.create(
        owner=user,
        billing_anchor=now - 4 * DAY - timedelta(minutes=5),
        interval_unit=Subscription.IntervalUnit.DAY,
    )

    job = payment_trigger(subscription=subscription)

    # Periods 0..4 are due; 0..2 are waived, 3 is charged now (oldest of the two kept).
    assert job.payment.period_index == 3
    statuses = dict(
        Payment.objects.filter(subscription=subscription).values_list("period_index", "status")
    )
    assert statuses == {
        0: Payment.Status.WAIVED,
        1: Payment.Status.WAIVED,
        2: Payment.Status.WAIVED,
        3: Payment.Status.PENDING,
    }
    # The scan then adds the last one and waives nothing more.
    scan_due(now=timezone.now(), publish=False)
    assert Payment.objects.filter(subscription=subscription).count() == 5
    assert Job.objects.filter(subscription=subscription).count() == 2
