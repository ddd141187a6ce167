"""Reconciling payments whose outcome is uncertain (a worker died after broadcasting, or a job
gave up while its transaction was still pending) by asking the chain."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from autopay.engine import payment_intent, payment_network, settlement_result
from autopay.rails import get_rail
from autopay.rails.base import Settlement
from core.networks import use_network
from jobs import services as job_services
from jobs.models import Job
from subscriptions import errors
from subscriptions import services as subscription_services
from subscriptions.models import Payment

logger = logging.getLogger(__name__)

# A failed payment's authorization is looked at until this long after its validBefore.
EXPIRED_AUTHORIZATION_MARGIN_SECONDS = 900


def payments_reconcile(*, older_than_seconds: int = 120, batch_size: int = 200) -> dict[str, int]:
    """Complete payments the chain says are paid; reopen 'submitted' ones it never saw.

    Candidates: payments left 'submitted' or 'processing' with no job in flight, payments
    'settlement_pending' with no job asking the chain, failed payments that carry a
    transaction hash, and failed payments whose authorization was signed, with no hash (a
    remote facilitator may have settled it without telling us): the transfer may have landed
    after all.
    """
    if get_rail() is None:
        return {"reconciled": 0}
    reconciled = 0
    for payment in _candidates(older_than_seconds=older_than_seconds, batch_size=batch_size):
        try:
            # Each payment is asked of its own network's chain.
            with use_network(payment_network(payment)):
                rail = get_rail()
                if rail is None:
                    continue
                settlement = rail.reconcile(payment_intent(payment))
        except errors.SettlementPending:
            continue
        except Exception as error:
            # One bad payment must not stop the sweep for the others.
            logger.warning(
                "reconcile payment %s failed: %s", payment.pk, getattr(error, "code", type(error))
            )
            continue
        if settlement is None:
            _forget_dead_settlement(payment)
            continue
        _record_found_settlement(payment, settlement)
        reconciled += 1
        logger.info("reconciled payment %s: settled in %s", payment.pk, settlement.transaction_hash)
    return {"reconciled": reconciled}


def _candidates(*, older_than_seconds: int, batch_size: int) -> list[Payment]:
    now = timezone.now()
    cutoff = now - timedelta(seconds=older_than_seconds)
    open_jobs = Job.objects.filter(status__in=Job.OPEN_STATUSES).values("payment_id")
    # Uncertain payments first; then failed ones that were broadcast (they carry a hash),
    # within the authorization's validity window plus a margin: older ones cannot change.
    uncertain = list(
        Payment.objects.filter(
            Q(
                updated_at__lt=cutoff,
                status__in=[Payment.Status.SUBMITTED, Payment.Status.PROCESSING],
            )
            # Waiting for the chain with no job asking: checked at every sweep.
            | Q(status=Payment.Status.SETTLEMENT_PENDING)
        )
        .exclude(pk__in=open_jobs)
        .order_by("updated_at")[:batch_size]
    )
    failed_after_broadcast = list(
        Payment.objects.filter(
            updated_at__lt=cutoff,
            updated_at__gt=now - timedelta(days=7),
            status=Payment.Status.FAILED,
        )
        .exclude(transaction_hash="")
        .exclude(pk__in=open_jobs)
        .order_by("updated_at")[: max(batch_size - len(uncertain), 0)]
    )
    signed_and_failed = _signed_and_failed(
        now=now,
        cutoff=cutoff,
        open_jobs=open_jobs,
        limit=batch_size - len(uncertain) - len(failed_after_broadcast),
    )
    return uncertain + failed_after_broadcast + signed_and_failed


def _signed_and_failed(
    *, now: datetime, cutoff: datetime, open_jobs: Any, limit: int
) -> list[Payment]:
    """Failed payments without a hash whose signed authorization could still be, or just
    have been, used on chain (until its validBefore, plus a margin for the chain's clock): the
    chain's answer is final after that. Soonest to expire first, so each gets a last look."""
    if limit <= 0:
        return []
    oldest_usable = int(now.timestamp()) - EXPIRED_AUTHORIZATION_MARGIN_SECONDS
    return list(
        Payment.objects.filter(
            updated_at__lt=cutoff,
            status=Payment.Status.FAILED,
            transaction_hash="",
            valid_before__gte=oldest_usable,
        )
        .exclude(pk__in=open_jobs)
        .order_by("valid_before")[:limit]
    )


def _forget_dead_settlement(payment: Payment) -> None:
    """The chain never saw this payment's settlement: forget the dead hash and pay it again.
    Nothing moved and it is not the customer's doing, so the subscription is not moved."""
    lost = payment.status in (
        Payment.Status.SUBMITTED,
        Payment.Status.SETTLEMENT_PENDING,
        Payment.Status.PROCESSING,
    )
    if lost:
        # Never reached the chain (or dropped from it, its authorization unused) and nobody is
        # working on it.
        error = errors.SettlementLost("the settlement never reached the chain; it is paid again")
        subscription_services.payment_record_failure(
            payment=payment, code=error.code, message=error.message
        )
    # The hash is dead: forget it, so the sweep does not look at it again.
    Payment.objects.filter(pk=payment.pk, transaction_hash=payment.transaction_hash).update(
        transaction_hash=""
    )
    latest = payment.jobs.order_by("-created_at").first() if lost else None
    if latest is not None and latest.status == Job.Status.FAILED:
        # A new job on the same period: its first step asks the chain (the derived nonce), so
        # a late landing of the dead transaction is found, never paid twice.
        with contextlib.suppress(job_services.JobNotRetryable):
            job_services.job_retry(job=latest)


def _record_found_settlement(payment: Payment, settlement: Settlement) -> None:
    """The money moved: the payment is completed, and its last job too (without the error it
    failed with)."""
    subscription_services.payment_record_success(
        payment=payment,
        transaction_hash=settlement.transaction_hash,
        block_number=settlement.block_number,
    )
    latest = payment.jobs.order_by("-created_at").first()
    if latest is not None and latest.status == Job.Status.FAILED:
        job_services.job_complete_reconciled(
            job=latest, result=settlement_result(payment, settlement)
        )
