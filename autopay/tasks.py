"""Celery tasks: thin shells that take ids, call the engine or a service, and log.

Task names are stable: django-celery-beat rows store them.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from autopay import batch, engine
from autopay.finality import payments_verify_finality
from autopay.metrics import record_scan
from autopay.reconcile import payments_reconcile
from autopay.scan import scan_due
from core.idempotency.middleware import idempotency_keys_purge
from core.redis import run_alone
from jobs.history import queue_depth_record
from jobs.services import jobs_purge_completed, jobs_recover, retry_countdown
from subscriptions.webhooks.services import webhook_events_purge

logger = logging.getLogger(__name__)


# A message whose claim could not reach the database comes back after at most this long.
DATABASE_RETRY_CAP_SECONDS = 10.0


@shared_task(
    bind=True,
    name="autopay.process_autopay_job",
    acks_late=True,
    # The attempt budget lives in the job row (attempts_made / max_attempts), which survives
    # redelivery and recovery; Celery's own counter would not, so it is not the limit here.
    max_retries=None,
)
def process_autopay_job(self: Any, job_id: str) -> str:
    """Claim and process one payment job.

    Retries of the job are scheduled in its row (delayed, next_attempt_at) and published by
    the dispatcher when due. Only a database that cannot be reached makes this message itself
    come back (after a jittered backoff), so that it is never acknowledged into nothing.
    """
    try:
        outcome = engine.process_job(
            job_id=job_id, worker_id=engine.worker_identity(self.request.id)
        )
    except (OperationalError, InterfaceError) as exc:
        countdown = retry_countdown(
            attempts_made=self.request.retries + 1, cap=DATABASE_RETRY_CAP_SECONDS
        )
        logger.warning(
            "job %s: database unavailable (%s); message retried in %.1fs",
            job_id,
            type(exc).__name__,
            countdown,
        )
        raise self.retry(countdown=countdown, exc=exc) from exc
    return outcome.status


@shared_task(bind=True, name="autopay.settle_batch", acks_late=True)
def settle_batch(self: Any, job_ids: list[str]) -> dict[str, Any]:
    """Settle a batch of scheduled payment jobs in one transaction, up to its broadcast; its
    outcome is recorded by autopay.confirm_batch, queued as soon as the transaction is out."""

    def confirm_later(sent: batch.SentBatch) -> None:
        confirm_batch.apply_async(
            kwargs={
                "transaction_hash": sent.transaction_hash,
                "job_ids": sent.job_ids,
                "lease_owner": sent.lease_owner,
                "deadline": sent.deadline,
            }
        )

    report = batch.settle_jobs(
        job_ids=job_ids,
        worker_id=engine.worker_identity(self.request.id),
        on_sent=confirm_later,
    )
    return report.as_dict()


@shared_task(
    bind=True,
    name="autopay.confirm_batch",
    acks_late=True,
    max_retries=None,
    # Recording races a manual trigger for a subscription's row now and then (a deadlock
    # PostgreSQL breaks by aborting one side): recording again is harmless.
    autoretry_for=(OperationalError,),
    retry_backoff=1,
    retry_jitter=True,
)
def confirm_batch(
    self: Any, transaction_hash: str, job_ids: list[str], lease_owner: str, deadline: float
) -> dict[str, Any]:
    """Record a batch transaction's outcome per job once it is mined; look again after
    AUTOPAY_BATCH_CONFIRM_POLL_SECONDS while it is not."""
    report = batch.confirm_jobs(
        transaction_hash=transaction_hash,
        job_ids=job_ids,
        lease_owner=lease_owner,
        deadline=deadline,
    )
    if report.retry_in is not None:
        # Every AUTOPAY_BATCH_CONFIRM_POLL_SECONDS for the first few looks, then at most once
        # a second: a stalled chain does not turn every batch in flight into a message storm.
        countdown = report.retry_in if self.request.retries < 8 else max(report.retry_in, 1.0)
        raise self.retry(countdown=countdown)
    return report.as_dict()


@shared_task(bind=True, name="autopay.scan_due_subscriptions", acks_late=True, ignore_result=True)
def scan_due_subscriptions(self: Any, helper: bool = False) -> dict[str, int]:
    """Find due periods, create their payments and jobs in bulk, publish the jobs.

    The scan beat starts asks for AUTOPAY_SCAN_PARALLELISM - 1 helper scans to run beside it on
    other worker processes; they share the due rows through SKIP LOCKED, so each period is
    still charged once and a large scan finishes in about half the time on two cores.
    """
    if not helper:
        for _ in range(max(settings.AUTOPAY_SCAN_PARALLELISM - 1, 0)):
            scan_due_subscriptions.apply_async(kwargs={"helper": True})

    summary = scan_due()
    record_scan(summary.seconds, summary.subscriptions, summary.jobs_created)
    logger.info("scan: %s", summary.as_dict())
    return summary.as_dict()


@shared_task(bind=True, name="autopay.recover_jobs", acks_late=True, ignore_result=True)
def recover_jobs(self: Any) -> dict[str, int]:
    """Take back jobs whose worker died, republish lost messages, reconcile stuck payments,
    re-verify completed payments until final (reorgs); sample the queue depth (dashboard).
    One sweep at a time on every machine: beat sends one every 10 s whether or not the last one
    finished, and a sweep that finds another running ends at once instead of taking a second
    worker."""
    with run_alone("recover_jobs", timeout=settings.CELERY_TASK_TIME_LIMIT) as alone:
        if not alone:
            logger.info("recovery: the previous sweep is still running; this one ends")
            return {"skipped": 1}
        return _recover()


def _recover() -> dict[str, int]:
    recovered = jobs_recover()
    reconciled = payments_reconcile()
    finality = payments_verify_finality()
    summary = {
        "leases_recovered": recovered.leases_recovered,
        "republished": recovered.republished,
        "failed": recovered.failed,
        **reconciled,
        **finality,
    }
    if any(summary.values()):
        logger.info("recovery: %s", summary)
    # Last: a sample that fails never holds up the recovery itself.
    queue_depth_record()
    return summary


@shared_task(bind=True, name="autopay.purge_completed_jobs", acks_late=True, ignore_result=True)
def purge_completed_jobs(self: Any) -> int:
    """Delete completed jobs past the retention; failed jobs are kept."""
    deleted = jobs_purge_completed(older_than_days=settings.AUTOPAY_COMPLETED_JOB_RETENTION_DAYS)
    if deleted:
        logger.info("purged %d completed job(s)", deleted)
    return deleted


@shared_task(bind=True, name="autopay.purge_expired_records", acks_late=True, ignore_result=True)
def purge_expired_records(self: Any) -> dict[str, int]:
    """Delete expired idempotency keys and webhook events past their retention."""
    summary = {
        "idempotency_keys": idempotency_keys_purge(),
        "webhook_events": webhook_events_purge(
            older_than_days=settings.WEBHOOK_EVENT_RETENTION_DAYS
        ),
    }
    if any(summary.values()):
        logger.info("purged: %s", summary)
    return summary
