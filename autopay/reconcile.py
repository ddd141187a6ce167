"""Reconciling payments whose outcome is uncertain (a worker died after broadcasting, or a job
gave up while its transaction was still pending) by asking the chain."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from autopay import errors
from autopay.rails import get_rail
from jobs.models import Job
from subscriptions import services as subscription_services
from subscriptions.models import Payment

logger = logging.getLogger(__name__)


def payments_reconcile(*, older_than_seconds: int = 120, batch_size: int = 200) -> dict[str, int]:
    """Complete payments the chain says are paid; reopen 'submitted' ones it never saw.

    Candidates: payments left 'submitted' or 'processing' with no job in flight, and failed
    payments that carry an authorization nonce (the transfer may have landed after all).
    """
    rail = get_rail()
    if rail is None:
        return {"reconciled": 0}
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    open_jobs = Job.objects.filter(status__in=Job.OPEN_STATUSES)
    candidates = (
        Payment.objects.filter(updated_at__lt=cutoff)
        .filter(
            Q(status__in=[Payment.Status.SUBMITTED, Payment.Status.PROCESSING])
            | Q(status=Payment.Status.FAILED) & ~Q(authorization_nonce="")
        )
        .exclude(pk__in=open_jobs.values("payment_id"))
        .order_by("updated_at")[:batch_size]
    )
    reconciled = 0
    for payment in candidates:
        try:
            settlement = rail.reconcile(payment)
        except errors.SettlementPending:
            continue
        except errors.PaymentError as error:
            logger.warning("reconcile payment %s: %s", payment.pk, error.code)
            continue
        if settlement is None:
            if payment.status in (Payment.Status.SUBMITTED, Payment.Status.PROCESSING):
                # Never reached the chain and nobody is working on it: hand it back.
                subscription_services.payment_record_failure(
                    payment=payment,
                    code="settlement_lost",
                    message="the settlement never reached the chain; it will be retried",
                )
            continue
        subscription_services.payment_record_success(
            payment=payment,
            transaction_hash=settlement.transaction_hash,
            block_number=settlement.block_number,
        )
        latest = payment.jobs.order_by("-created_at").first()
        if latest is not None and latest.status == Job.Status.FAILED:
            Job.objects.filter(pk=latest.pk, status=Job.Status.FAILED).update(
                status=Job.Status.COMPLETED,
                progress=100,
                result={
                    "success": True,
                    "transactionHash": settlement.transaction_hash,
                    "subscriptionId": str(payment.subscription_id),
                    "amount": format(payment.amount.normalize(), "f"),
                    "reconciled": True,
                },
                finished_at=timezone.now(),
            )
        reconciled += 1
        logger.info("reconciled payment %s: settled in %s", payment.pk, settlement.transaction_hash)
    return {"reconciled": reconciled}
