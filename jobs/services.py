"""Job state machine. Every transition is a conditional update, so that two workers, a
redelivered message or a recovery sweep can never both act on one job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.errors import StateConflict
from jobs.models import Job
from jobs.queue import broker_queued_jobs, publish_jobs, publish_jobs_on_commit
from subscriptions import errors
from subscriptions.models import Payment, Subscription
from subscriptions.services import (
    PaymentConflict,
    payment_record_failure,
    payment_reopen,
    payment_take_due,
)

logger = logging.getLogger(__name__)


class JobAlreadyOpen(StateConflict):
    """The payment already has a job waiting, active or delayed."""

    code = "job_already_open"


class JobNotRetryable(StateConflict):
    """The job cannot be retried (not failed, or its payment is already paid)."""

    code = "job_not_retryable"


class LeaseLost(Exception):
    """This worker no longer holds the job's lease (recovered or finished elsewhere)."""


def job_data(
    *,
    subscription_id: int,
    payment_id: int | None,
    payer_address: str,
    amount: Decimal,
    recipient_address: str,
    service_name: str,
    period_start: datetime,
) -> dict[str, Any]:
    """The job's input in the baseline's shape (paymentId left out while it is unknown)."""
    data = {
        "subscriptionId": str(subscription_id),
        "paymentId": str(payment_id),
        "userAddress": payer_address,
        "amount": format(amount.normalize(), "f"),
        "recipientAddress": recipient_address,
        "serviceName": service_name,
        "periodStart": period_start.astimezone(UTC).isoformat(),
    }
    if payment_id is None:
        del data["paymentId"]
    return data


def job_snapshot(payment: Payment) -> dict[str, Any]:
    """The job's input for an existing payment."""
    return job_data(
        subscription_id=payment.subscription_id,
        payment_id=payment.pk,
        payer_address=payment.payer_address,
        amount=payment.amount,
        recipient_address=payment.recipient_address,
        service_name=payment.subscription.service_name,
        period_start=payment.period_start,
    )


def job_create(*, payment: Payment, source: str, publish: bool = True) -> Job:
    """Create a job for ``payment`` and publish it after commit.

    Raises JobAlreadyOpen when the payment has an open job (the partial unique constraint
    decides, not a read-then-write check).
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            job = Job.objects.create(
                subscription_id=payment.subscription_id,
                payment=payment,
                source=source,
                max_attempts=settings.AUTOPAY_JOB_MAX_ATTEMPTS,
                data=job_snapshot(payment),
                enqueued_at=now,
            )
    except IntegrityError as exc:
        raise JobAlreadyOpen(f"payment {payment.pk} already has a job in flight") from exc
    if publish:
        publish_jobs_on_commit([job.pk])
    return job


def payment_trigger(*, subscription: Subscription) -> Job:
    """Manual trigger: create (or reuse) the payment of the current due period and a job.

    Raises SubscriptionStateError (400) when auto-pay is off or the subscription cannot pay,
    PaymentConflict (409) when that period's payment is in flight or already paid.
    """
    with transaction.atomic():
        payment = payment_take_due(subscription=subscription, now=timezone.now())
        if payment.jobs.filter(status__in=Job.OPEN_STATUSES).exists():
            raise PaymentConflict("This period's payment is already in flight.")
        payment_reopen(payment=payment)
        try:
            return job_create(payment=payment, source=Job.Source.MANUAL)
        except JobAlreadyOpen as exc:
            raise PaymentConflict("This period's payment is already in flight.") from exc


def job_claim(*, job_id: UUID | str, worker_id: str) -> Job | None:
    """Move a waiting or delayed job to active for this worker, or return None.

    Only one caller can win: the update is conditional on the job's current status, on its
    retry time having come, and on attempts remaining.
    """
    now = timezone.now()
    claimed = (
        Job.objects.filter(pk=job_id, status__in=[Job.Status.WAITING, Job.Status.DELAYED])
        .filter(attempts_made__lt=F("max_attempts"))
        .filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + timedelta(seconds=1))
        )
        .update(
            status=Job.Status.ACTIVE,
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=settings.AUTOPAY_JOB_LEASE_SECONDS),
            attempts_made=F("attempts_made") + 1,
            started_at=Coalesce(F("started_at"), now),
            next_attempt_at=None,
            updated_at=now,
        )
    )
    if not claimed:
        return None
    return Job.objects.select_related("payment", "subscription").get(pk=job_id)


def _held(job: Job, worker_id: str) -> Any:
    return Job.objects.filter(pk=job.pk, status=Job.Status.ACTIVE, lease_owner=worker_id)


def job_progress(*, job: Job, worker_id: str, progress: int) -> None:
    """Record progress and extend the lease; raise LeaseLost if the job was taken back."""
    now = timezone.now()
    updated = _held(job, worker_id).update(
        progress=progress,
        lease_expires_at=now + timedelta(seconds=settings.AUTOPAY_JOB_LEASE_SECONDS),
        updated_at=now,
    )
    if not updated:
        raise LeaseLost(f"job {job.pk} is no longer held by {worker_id}")
    job.progress = progress


def job_complete(*, job: Job, worker_id: str, result: dict[str, Any]) -> bool:
    updated = _held(job, worker_id).update(**_completed(result))
    return bool(updated)


def _completed(result: dict[str, Any]) -> dict[str, Any]:
    """The columns of a completed job: no error left, no lease."""
    now = timezone.now()
    return {
        "status": Job.Status.COMPLETED,
        "progress": 100,
        "result": result,
        "error_code": "",
        "error": "",
        "finished_at": now,
        "lease_owner": "",
        "lease_expires_at": None,
        "updated_at": now,
    }


def job_complete_reconciled(*, job: Job, result: dict[str, Any]) -> bool:
    """A failed job whose payment the chain shows settled after all: completed, its error
    cleared (it no longer describes what happened)."""
    updated = Job.objects.filter(pk=job.pk, status=Job.Status.FAILED).update(**_completed(result))
    return bool(updated)


def job_fail(
    *,
    job: Job,
    worker_id: str | None,
    code: str,
    message: str,
    expired_before: datetime | None = None,
) -> bool:
    """Fail the job for good (kept for debugging, as the baseline promised). Only the lease
    holder ``worker_id`` may; without one (an operator, recovery) any open job, or with
    ``expired_before`` only an active job whose lease expired before then."""
    now = timezone.now()
    if worker_id is not None:
        queryset = _held(job, worker_id)
    elif expired_before is not None:
        queryset = Job.objects.filter(
            pk=job.pk, status=Job.Status.ACTIVE, lease_expires_at__lt=expired_before
        )
    else:
        queryset = Job.objects.filter(pk=job.pk, status__in=Job.OPEN_STATUSES)
    updated = queryset.update(
        status=Job.Status.FAILED,
        error_code=code,
        error=message[:2000],
        result={"success": False, "error": code, "message": message[:500]},
        finished_at=now,
        lease_owner="",
        lease_expires_at=None,
        next_attempt_at=None,
        updated_at=now,
    )
    return bool(updated)


def job_delay(
    *,
    job: Job,
    worker_id: str,
    countdown: float,
    code: str,
    message: str,
    count_attempt: bool = True,
) -> bool:
    """Park the job until its next attempt after a transient error. ``count_attempt=False``
    gives the attempt back (the job waited for the operator, it did not try to pay)."""
    now = timezone.now()
    extra: dict[str, Any] = {} if count_attempt else {"attempts_made": F("attempts_made") - 1}
    updated = _held(job, worker_id).update(
        **extra,
        status=Job.Status.DELAYED,
        error_code=code,
        error=message[:2000],
        next_attempt_at=now + timedelta(seconds=countdown),
        enqueued_at=now,
        lease_owner="",
        lease_expires_at=None,
        updated_at=now,
    )
    return bool(updated)


def retry_countdown(*, attempts_made: int) -> float:
    """Backoff before the next attempt: base * 2**(n-1), i.e. 2 s then 4 s by default."""
    base = settings.AUTOPAY_RETRY_BACKOFF_SECONDS
    return float(base * (2 ** max(attempts_made - 1, 0)))


def job_retry(*, job: Job) -> Job:
    """Retry a failed job: a new job on the same payment, so the history stays visible."""
    if job.status != Job.Status.FAILED:
        raise JobNotRetryable(f"job {job.pk} is {job.status}; only failed jobs can be retried")
    subscription = Subscription.objects.get(pk=job.subscription_id)
    if not subscription.is_chargeable:
        raise JobNotRetryable(
            f"subscription {subscription.pk} is {subscription.status}"
            + ("" if subscription.auto_pay_enabled else " with auto-pay off")
            + "; resume it before retrying"
        )

    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=job.payment_id)
        if payment.status == Payment.Status.COMPLETED:
            raise JobNotRetryable(f"payment {payment.pk} is already completed")
        payment_reopen(payment=payment)
        return job_create(payment=payment, source=Job.Source.RETRY)


@dataclass(frozen=True)
class RecoverySummary:
    leases_recovered: int
    republished: int
    failed: int


def jobs_recover(*, max_recoveries: int = 3, batch_size: int = 500) -> RecoverySummary:
    """Take back jobs whose worker died (lease expired) and republish lost messages.

    A job recovered more than ``max_recoveries`` times fails with ``worker_lost`` so that a
    job that kills its worker cannot loop forever; its payment is reconciled separately.
    """
    now = timezone.now()
    recovered_ids, failed = _take_back_expired_leases(
        now=now, max_recoveries=max_recoveries, batch_size=batch_size
    )
    republish = recovered_ids + _lost_messages(now=now, batch_size=batch_size)
    if republish:
        publish_jobs(republish)
    return RecoverySummary(
        leases_recovered=len(recovered_ids), republished=len(republish), failed=failed
    )


def _take_back_expired_leases(
    *, now: datetime, max_recoveries: int, batch_size: int
) -> tuple[list[str], int]:
    """Jobs of dead workers go back to waiting (their attempt given back), or fail once they
    have killed their worker too often. Returns the ids to republish and how many failed."""
    recovered_ids: list[str] = []
    failed = 0
    expired = list(
        Job.objects.filter(status=Job.Status.ACTIVE, lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values_list("pk", "recoveries", "attempts_made")[:batch_size]
    )
    for job_id, recoveries, attempts_made in expired:
        if recoveries >= max_recoveries:
            failed += _fail_lost_job(job_id=job_id, now=now)
            continue
        # The lost attempt is given back: a crash is not a payment failure.
        if Job.objects.filter(pk=job_id, status=Job.Status.ACTIVE, lease_expires_at__lt=now).update(
            status=Job.Status.WAITING,
            lease_owner="",
            lease_expires_at=None,
            recoveries=F("recoveries") + 1,
            attempts_made=F("attempts_made") - 1 if attempts_made > 0 else 0,
            enqueued_at=now,
            updated_at=now,
        ):
            recovered_ids.append(str(job_id))
            logger.warning("recovered job %s from an expired lease", job_id)
    return recovered_ids, failed


def _fail_lost_job(*, job_id: UUID, now: datetime) -> int:
    """Fail a job that lost its worker too often, and its payment, in one transaction. The
    period stays owed (failed, so dunning retries it); a payment that was broadcast keeps its
    hash and the reconcile sweep asks the chain about it."""
    error = errors.WorkerLost("worker lost the job too many times (killed or timed out)")
    with transaction.atomic():
        job = Job.objects.select_related("payment").get(pk=job_id)
        Payment.objects.select_for_update().filter(pk=job.payment_id).exists()
        if not job_fail(
            job=job, worker_id=None, code=error.code, message=error.message, expired_before=now
        ):
            return 0
        payment_record_failure(payment=job.payment, code=error.code, message=error.message)
    return 1


def _lost_messages(*, now: datetime, batch_size: int) -> list[str]:
    """Waiting or delayed jobs whose message was lost (older than the stale threshold)."""
    stale_before = now - timedelta(seconds=settings.AUTOPAY_STALE_WAITING_SECONDS)
    stale_waiting = Q(status=Job.Status.WAITING, enqueued_at__lt=stale_before)
    # A long backlog is not a lost message: when the broker holds at least as many jobs
    # (a batch message carries many) as there are waiting jobs, old waiting jobs are only
    # queued behind others.
    queued = broker_queued_jobs()
    if queued is not None and queued >= Job.objects.filter(status=Job.Status.WAITING).count():
        stale_waiting = Q(pk__in=[])
    stale = list(
        Job.objects.filter(
            stale_waiting | Q(status=Job.Status.DELAYED, next_attempt_at__lt=stale_before)
        )
        .order_by("enqueued_at")
        .values_list("pk", flat=True)[:batch_size]
    )
    if stale:
        Job.objects.filter(pk__in=stale).update(enqueued_at=now)
    return [str(job_id) for job_id in stale]


def jobs_purge_completed(*, older_than_days: int) -> int:
    """Delete completed jobs older than the retention; failed jobs are always kept."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    deleted, _ = Job.objects.filter(status=Job.Status.COMPLETED, finished_at__lt=cutoff).delete()
    return deleted
