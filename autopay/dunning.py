"""Dunning: failed payments of past-due subscriptions are retried on the subscription-level
schedule (AUTOPAY_DUNNING_SCHEDULE_HOURS), each retry a new job on the same payment."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import connection, transaction
from django.db.models import F

from jobs.bulk import insert_jobs
from jobs.models import Job
from jobs.services import job_data
from subscriptions.models import Payment, Subscription


def no_key_lock() -> bool:
    # FOR NO KEY UPDATE: the lock an UPDATE of non-key columns takes anyway. Unlike FOR UPDATE
    # it lets other transactions insert payments and jobs that reference the row meanwhile
    # (their foreign-key checks take KEY SHARE).
    return bool(connection.features.has_select_for_no_key_update)


def dunning_schedule(*, now: datetime, batch_size: int) -> list[str]:
    """Retry the failed payments of past-due subscriptions whose retry time has come.

    A batch of subscriptions is claimed under row locks (skipping rows another scan holds) and
    their retry time cleared in the same transaction, so two scans cannot both retry one; each
    retry is a new job on the same payment, so the attempt history stays visible.
    """
    job_ids: list[str] = []
    while True:
        with transaction.atomic():
            claimed = _claim_due(now=now, batch_size=batch_size)
            if not claimed:
                return job_ids
            job_ids.extend(_retry_failed_payments(claimed, now=now))
        if len(claimed) < batch_size:
            return job_ids


def _claim_due(*, now: datetime, batch_size: int) -> list[int]:
    """Past-due subscriptions whose retry time has come, locked, their retry time cleared and
    their dunning attempt counted."""
    claimed = list(
        Subscription.objects.select_for_update(skip_locked=True, no_key=no_key_lock())
        .filter(
            status=Subscription.Status.PAST_DUE,
            auto_pay_enabled=True,
            dunning_next_retry_at__lte=now,
        )
        .order_by("dunning_next_retry_at", "id")
        .values_list("id", flat=True)[:batch_size]
    )
    if claimed:
        Subscription.objects.filter(pk__in=claimed).update(
            dunning_next_retry_at=None,
            dunning_attempts=F("dunning_attempts") + 1,
            updated_at=now,
        )
    return claimed


def _retry_failed_payments(subscription_ids: list[int], *, now: datetime) -> list[str]:
    """A new job for each failed payment of these subscriptions, which become pending again."""
    failed = list(
        Payment.objects.filter(subscription_id__in=subscription_ids, status=Payment.Status.FAILED)
        .order_by("subscription_id", "period_start")
        .values_list(
            "pk",
            "subscription_id",
            "payer_address",
            "amount",
            "recipient_address",
            "subscription__service_name",
            "period_start",
        )
    )
    if not failed:
        return []
    Payment.objects.filter(pk__in=[row[0] for row in failed]).update(
        status=Payment.Status.PENDING, error_code="", error_message="", updated_at=now
    )
    job_rows = [
        (
            uuid.uuid4(),
            subscription_id,
            payment_id,
            job_data(
                subscription_id=subscription_id,
                payment_id=payment_id,
                payer_address=payer_address,
                amount=amount,
                recipient_address=recipient_address,
                service_name=service_name,
                period_start=period_start,
            ),
        )
        for (
            payment_id,
            subscription_id,
            payer_address,
            amount,
            recipient_address,
            service_name,
            period_start,
        ) in failed
    ]
    return insert_jobs(job_rows, source=Job.Source.DUNNING, now=now)
