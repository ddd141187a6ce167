"""Job state machine. Every transition is a conditional update, so that two workers, a
redelivered message or a recovery sweep can never both act on one job."""

from __future__ import annotations

import logging
import random
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

from core.errors import StateConflict
from jobs.api.serializers import JobStatusSerializer
from jobs.models import Job, JobAttempt
from jobs.queue import (
    broker_is_redis,
    broker_jobs_without_message,
    broker_queued_jobs,
    publish_jobs_on_commit,
    publish_or_mark_unpublished,
)
from subscriptions import errors
from subscriptions.models import Payment, Subscription
from subscriptions.services import (
    PaymentConflict,
    payment_await_settlement,
    payment_record_failure,
    payment_reopen,
    payment_take_due,
)
from subscriptions.webhooks.models import EventType
from subscriptions.webhooks.services import webhook_event_record

logger = logging.getLogger(__name__)


class JobAlreadyOpen(StateConflict):
    """The payment already has a job waiting, active or delayed."""

    code = "job_already_open"


class JobNotRetryable(StateConflict):
    """The job cannot be retried (not failed, or its payment is already paid)."""

    code = "job_not_retryable"


class LeaseLost(Exception):
    """This worker no longer holds the job's lease (recovered or finished elsewhere)."""


@dataclass(frozen=True)
class AttemptReport:
    """What an attempt did on the chain, for its row in the attempts ledger."""

    transaction_hashes: tuple[str, ...] = ()
    gas_used: int | None = None
    fee_wei: int | None = None


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
    retry time having come, and on attempts remaining. The winner's attempt is appended to
    the attempts ledger in the same transaction.
    """
    now = timezone.now()
    with transaction.atomic():
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
        job = Job.objects.select_related("payment", "subscription").get(pk=job_id)
        JobAttempt.objects.create(
            job=job, number=job.attempts_made, worker=worker_id, started_at=now
        )
    return job


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


def job_lease_renew(*, job_id: UUID | str, worker_id: str) -> bool:
    """Extend the lease of an active job this worker holds (the heartbeat); False when it no
    longer holds it."""
    expires = timezone.now() + timedelta(seconds=settings.AUTOPAY_JOB_LEASE_SECONDS)
    return bool(
        Job.objects.filter(pk=job_id, status=Job.Status.ACTIVE, lease_owner=worker_id).update(
            lease_expires_at=expires
        )
    )


def job_complete(
    *, job: Job, worker_id: str, result: dict[str, Any], report: AttemptReport | None = None
) -> bool:
    with transaction.atomic():
        updated = _held(job, worker_id).update(**_completed(result))
        if updated:
            job_attempt_close(
                job=job, worker_id=worker_id, outcome=JobAttempt.Outcome.COMPLETED, report=report
            )
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
    report: AttemptReport | None = None,
) -> bool:
    """Fail the job for good (kept for debugging, as the baseline promised). Only the lease
    holder ``worker_id`` may; without one (an operator, recovery) any open job, or with
    ``expired_before`` only an active job whose lease expired before then. The attempt in
    progress is closed as failed (the holder's) or as its worker lost (anyone else's)."""
    now = timezone.now()
    if worker_id is not None:
        queryset = _held(job, worker_id)
    elif expired_before is not None:
        queryset = Job.objects.filter(
            pk=job.pk, status=Job.Status.ACTIVE, lease_expires_at__lt=expired_before
        )
    else:
        queryset = Job.objects.filter(pk=job.pk, status__in=Job.OPEN_STATUSES)
    # The job.failed webhook event commits with the failure, or neither does.
    with transaction.atomic():
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
        if updated:
            job_attempt_close(
                job=job,
                worker_id=worker_id,
                outcome=JobAttempt.Outcome.FAILED
                if worker_id is not None
                else JobAttempt.Outcome.WORKER_LOST,
                code=code,
                message=message,
                report=report,
            )
            _job_failed_event(job.pk)
    return bool(updated)


def _job_failed_event(job_id: Any) -> None:
    failed = Job.objects.select_related("subscription").get(pk=job_id)
    webhook_event_record(
        owner_id=failed.subscription.owner_id,
        type=EventType.JOB_FAILED,
        data=lambda: dict(JobStatusSerializer(failed).data),
    )


def job_delay(
    *,
    job: Job,
    worker_id: str,
    countdown: float,
    code: str,
    message: str,
    count_attempt: bool = True,
    outcome: str = JobAttempt.Outcome.RETRY,
    report: AttemptReport | None = None,
) -> bool:
    """Park the job until its next attempt after a transient error. ``count_attempt=False``
    gives the attempt back (the job waited for the operator or the chain, it did not try to
    pay). The job is due again at ``next_attempt_at``; the dispatcher publishes it then (its
    message is unpublished until then: ``enqueued_at`` empty)."""
    now = timezone.now()
    extra: dict[str, Any] = {} if count_attempt else {"attempts_made": F("attempts_made") - 1}
    with transaction.atomic():
        updated = _held(job, worker_id).update(
            **extra,
            status=Job.Status.DELAYED,
            error_code=code,
            error=message[:2000],
            next_attempt_at=now + timedelta(seconds=countdown),
            enqueued_at=None,
            lease_owner="",
            lease_expires_at=None,
            updated_at=now,
        )
        if updated:
            job_attempt_close(
                job=job,
                worker_id=worker_id,
                outcome=outcome,
                code=code,
                message=message,
                report=report,
            )
    return bool(updated)


def job_attempt_close(
    *,
    job: Job,
    worker_id: str | None,
    outcome: str,
    code: str = "",
    message: str = "",
    report: AttemptReport | None = None,
) -> int:
    """Close the job's attempt in progress (``worker_id``'s, or any with None) with its
    outcome. An attempt is closed once: a closed row is never written again."""
    open_attempts = JobAttempt.objects.filter(job_id=job.pk, finished_at__isnull=True)
    if worker_id is not None:
        open_attempts = open_attempts.filter(worker=worker_id)
    fields: dict[str, Any] = {
        "outcome": outcome,
        "finished_at": timezone.now(),
        "error_code": code[:64],
        "error_message": message[:2000],
    }
    if report is not None:
        fields.update(
            transaction_hashes=list(report.transaction_hashes),
            gas_used=report.gas_used,
            fee_wei=report.fee_wei,
        )
    return open_attempts.update(**fields)


def job_note_reorg(*, job: Job, transaction_hash: str, message: str) -> JobAttempt:
    """Append to a completed job's ledger that its transaction left the canonical chain (the
    job stays as it ended; its payment is settled again by a new job)."""
    now = timezone.now()
    return JobAttempt.objects.create(
        job=job,
        number=job.attempts_made,
        outcome=JobAttempt.Outcome.REORGED,
        started_at=now,
        finished_at=now,
        error_code="chain_reorg",
        error_message=message[:2000],
        transaction_hashes=[transaction_hash],
    )


def job_waits(*, job: Job) -> int:
    """How many times the job has waited out a fault (its backoff grows with them)."""
    return JobAttempt.objects.filter(job_id=job.pk, outcome=JobAttempt.Outcome.WAITING).count()


def retry_countdown(*, attempts_made: int, cap: float | None = None) -> float:
    """Backoff before the next attempt: base * 2**(n-1), i.e. 2 s then 4 s by default, plus a
    random jitter of up to AUTOPAY_RETRY_JITTER of it (25 %: 2-2.5 s, 4-5 s), so that jobs
    that failed together (an RPC outage) do not all come back in the same instant."""
    base = settings.AUTOPAY_RETRY_BACKOFF_SECONDS
    delay = float(base * (2 ** max(attempts_made - 1, 0)))
    if cap is not None:
        delay = min(delay, cap)
    return delay * (1 + random.uniform(0, settings.AUTOPAY_RETRY_JITTER))


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
    published: int = 0


def jobs_dispatch(*, batch_size: int = 1000) -> int:
    """The outbox dispatcher's step: publish every job that is due and has no message on the
    broker (a retry whose backoff ended, a job taken back from a dead worker, a job whose
    publish failed while the broker was down). Returns how many were published.

    Rows are picked with SKIP LOCKED and marked published (``enqueued_at``) before the publish,
    so two dispatchers never publish the same job twice; a failed publish unmarks them.
    """
    now = timezone.now()
    with transaction.atomic():
        ids = [
            str(job_id)
            for job_id in Job.objects.select_for_update(skip_locked=True)
            .filter(status__in=[Job.Status.WAITING, Job.Status.DELAYED], enqueued_at__isnull=True)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .order_by(F("next_attempt_at").asc(nulls_first=True))
            .values_list("pk", flat=True)[:batch_size]
        ]
        if not ids:
            return 0
        Job.objects.filter(pk__in=ids).update(enqueued_at=now)
    return publish_or_mark_unpublished(ids)


def jobs_recover(*, max_recoveries: int = 3, batch_size: int = 500) -> RecoverySummary:
    """Take back jobs whose worker died (lease expired), find lost messages, publish both.

    A job recovered more than ``max_recoveries`` times fails with ``worker_lost`` so that a
    job that kills its worker cannot loop forever; its payment is reconciled separately.
    """
    now = timezone.now()
    recovered_ids, failed = _take_back_expired_leases(
        now=now, max_recoveries=max_recoveries, batch_size=batch_size
    )
    lost = _mark_lost_messages(now=now, batch_size=batch_size)
    published = jobs_dispatch(batch_size=batch_size * 2)
    return RecoverySummary(
        leases_recovered=len(recovered_ids),
        republished=len(recovered_ids) + lost,
        failed=failed,
        published=published,
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
        with transaction.atomic():
            taken_back = Job.objects.filter(
                pk=job_id, status=Job.Status.ACTIVE, lease_expires_at__lt=now
            ).update(
                status=Job.Status.WAITING,
                lease_owner="",
                lease_expires_at=None,
                recoveries=F("recoveries") + 1,
                attempts_made=F("attempts_made") - 1 if attempts_made > 0 else 0,
                # Unpublished: the dispatcher publishes it (at once, it is due).
                enqueued_at=None,
                next_attempt_at=None,
                updated_at=now,
            )
            if taken_back:
                _close_lost_attempt(job_id=job_id)
        if taken_back:
            recovered_ids.append(str(job_id))
            logger.warning("recovered job %s from an expired lease", job_id)
    return recovered_ids, failed


def _close_lost_attempt(*, job_id: UUID) -> None:
    """The dead worker's attempt, closed as lost, with the transaction it had broadcast (the
    payment's hash is written before every broadcast)."""
    payment = Payment.objects.filter(jobs__pk=job_id).values("status", "transaction_hash").first()
    hashes: tuple[str, ...] = ()
    if payment and payment["status"] == Payment.Status.SUBMITTED and payment["transaction_hash"]:
        hashes = (payment["transaction_hash"],)
    job_attempt_close(
        job=Job(pk=job_id),
        worker_id=None,
        outcome=JobAttempt.Outcome.WORKER_LOST,
        code=errors.WorkerLost.code,
        message="the worker stopped renewing its lease (killed or stuck); the job was taken back",
        report=AttemptReport(transaction_hashes=hashes) if hashes else None,
    )


def _fail_lost_job(*, job_id: UUID, now: datetime) -> int:
    """Fail a job that lost its worker too often, and its payment, in one transaction. The
    period stays owed (failed, so dunning retries it); a payment that was broadcast is not
    failed but settlement_pending, and the reconcile sweep asks the chain about it."""
    error = errors.WorkerLost("worker lost the job too many times (killed or timed out)")
    with transaction.atomic():
        job = Job.objects.select_related("payment").get(pk=job_id)
        payment = Payment.objects.select_for_update().get(pk=job.payment_id)
        if not job_fail(
            job=job, worker_id=None, code=error.code, message=error.message, expired_before=now
        ):
            return 0
        if payment.money_may_move:
            payment_await_settlement(
                payment=payment,
                code=errors.SettlementPending.code,
                message=f"transaction {payment.transaction_hash} may still settle; the chain "
                f"is asked again (job failed: {error.code})",
            )
        else:
            payment_record_failure(payment=payment, code=error.code, message=error.message)
    return 1


def _mark_lost_messages(*, now: datetime, batch_size: int) -> int:
    """Due jobs whose message was published more than AUTOPAY_STALE_WAITING_SECONDS ago, is
    still unclaimed, and is no longer on the broker (a Redis restarted without its data, a
    message deleted by hand): they are marked unpublished for the dispatcher.

    A message is on the broker while it waits on the queue's lists and while a worker holds
    it unacknowledged (reserved behind a busy process, or waiting out a countdown), however
    long that takes: a backlog is not a loss, and republishing it would send batch jobs down
    the per-job path one message each. The cheap count decides first; only when it cannot
    explain the waiting jobs are the broker's messages read to find which ones are missing.
    A message fetched longer ago than its tasks' time limit allows is a dead worker's: its
    jobs are republished (kombu would give it back only after CELERY_VISIBILITY_TIMEOUT).
    """
    stale_before = now - timedelta(seconds=settings.AUTOPAY_STALE_WAITING_SECONDS)
    waiting = [Job.Status.WAITING, Job.Status.DELAYED]
    stale = Job.objects.filter(status__in=waiting, enqueued_at__lt=stale_before)
    measurable = broker_is_redis()
    # At most this many jobs' messages are on the broker.
    queued = broker_queued_jobs()
    if measurable and queued is None:
        return 0  # the broker does not answer: nothing can be told lost, nor republished
    if queued is not None and stale.order_by()[: queued + 1].count() <= queued:
        return 0
    # Of the oldest (queued + batch_size) stale jobs, at least batch_size have no message.
    candidates = [
        str(job_id)
        for job_id in stale.order_by("enqueued_at").values_list("pk", flat=True)[
            : batch_size + (queued or 0)
        ]
    ]
    if measurable:
        missing = broker_jobs_without_message(candidates)
        if missing is None:
            return 0
        candidates = [job_id for job_id in candidates if job_id in missing]
    ids = candidates[:batch_size]
    if not ids:
        return 0
    marked = Job.objects.filter(
        pk__in=ids, status__in=waiting, enqueued_at__lt=stale_before
    ).update(enqueued_at=None)
    if marked:
        logger.warning(
            "%d job message(s) lost (broker holds at most %s jobs' messages); republishing",
            marked,
            "an unknown number of" if queued is None else queued,
        )
    return marked


def jobs_purge_completed(*, older_than_days: int) -> int:
    """Delete completed jobs older than the retention; failed jobs are always kept."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    deleted, _ = Job.objects.filter(status=Job.Status.COMPLETED, finished_at__lt=cutoff).delete()
    return deleted
