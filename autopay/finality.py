"""Reorg safety: a completed payment is re-verified until its transaction is
CHAIN_FINALITY_BLOCKS deep. One whose transaction left the canonical chain while its
authorization stayed unused goes back in flight and is settled again, once, with the same
derived authorization nonce (re-signed with a fresh validity window); the chain still refuses
a second charge. Operators see the event: the completed job gets a ``reorged`` row in its
attempts ledger naming the new job (source ``reorg``), and a warning is logged.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from autopay.chain import client as chain
from autopay.chain.multicall import raw_receipt
from autopay.engine import payment_intent
from core.networks import network_registry, use_network
from jobs import services as job_services
from jobs.models import Job
from subscriptions import errors
from subscriptions import services as subscription_services
from subscriptions.models import Payment

logger = logging.getLogger(__name__)


def payments_verify_finality(*, batch_size: int = 2000) -> dict[str, int]:
    """On every configured network: check the completed, not yet final payments whose
    transaction should be deep enough by now, and those whose block no longer exists (beyond
    the head after a rollback): finalize, follow or settle them again.

    One receipt per *transaction*, never per payment: a batch transaction carrying 200
    payments is read once (its raw JSON status and block, not its logs), and its payments are
    finalized in one statement."""
    summary = {"finalized": 0, "moved": 0, "reorged": 0}
    for network in network_registry().values():
        with use_network(network):
            for key, value in _verify_network(network.network, batch_size=batch_size).items():
                summary[key] += value
    return summary


def _verify_network(network: str, *, batch_size: int) -> dict[str, int]:
    summary = {"finalized": 0, "moved": 0, "reorged": 0}
    unfinal = Payment.objects.filter(
        status=Payment.Status.COMPLETED, finalized_at__isnull=True, network=network
    ).exclude(transaction_hash="")
    if not unfinal.exists():
        return summary
    try:
        head = chain.block_number()
    except errors.PaymentError:
        return summary  # the chain does not answer: next sweep
    finality = max(settings.CHAIN_FINALITY_BLOCKS, 1)
    deep_enough_below = head - finality + 1
    candidates = list(
        unfinal.filter(Q(block_number__gt=head) | Q(block_number__isnull=True)).order_by("pk")[
            :batch_size
        ]
    ) + list(
        unfinal.filter(block_number__lte=deep_enough_below).order_by("block_number", "pk")[
            :batch_size
        ]
    )
    by_transaction: dict[str, list[Payment]] = {}
    for payment in candidates:
        by_transaction.setdefault(payment.transaction_hash, []).append(payment)
    w3 = chain.get_web3()
    for transaction_hash, payments in by_transaction.items():
        try:
            receipt = raw_receipt(w3, transaction_hash)
        except errors.PaymentError as error:
            logger.warning("finality check of %s failed: %s", transaction_hash, error.code)
            continue
        if receipt is not None and int(str(receipt.get("status", "0x0")), 16) == 1:
            block = int(str(receipt["blockNumber"]), 16)
            final = [
                payment.pk
                for payment in payments
                if payment.block_number == block and block <= deep_enough_below
            ]
            summary["finalized"] += subscription_services.payments_finalize(
                payment_ids=final, transaction_hash=transaction_hash, block_number=block
            )
            for payment in payments:
                if payment.block_number != block:
                    # Re-mined in another block after a reorg: final once that one is deep.
                    subscription_services.payment_move_settlement(
                        payment=payment, transaction_hash=transaction_hash, block_number=block
                    )
                    summary["moved"] += 1
            continue
        # Gone from the canonical chain (or reverted there): each payment asks the chain
        # whether its authorization was used meanwhile, else it is settled again.
        for payment in payments:
            try:
                outcome = _verify_gone(payment)
            except errors.PaymentError as error:
                logger.warning("finality check of payment %s failed: %s", payment.pk, error.code)
                continue
            if outcome in summary:
                summary[outcome] += 1
    return summary


def _verify_gone(payment: Payment) -> str:
    """The payment's transaction is not (or no longer successfully) on the canonical chain."""
    intent = payment_intent(payment)
    if chain.authorization_used(intent.token_address, intent.payer, intent.nonce):
        # The money moved, in another transaction (the same authorization submitted again).
        found = chain.find_authorization_transaction(
            intent.token_address,
            intent.payer,
            intent.nonce,
            from_block=max((payment.search_from_block or 0) - 10, 0),
        )
        if found is not None and found[0] != payment.transaction_hash:
            subscription_services.payment_move_settlement(
                payment=payment, transaction_hash=found[0], block_number=found[1]
            )
            return "moved"
        return "unchanged"
    return "reorged" if _settle_again(payment) else "unchanged"


def _settle_again(payment: Payment) -> bool:
    """The transaction is gone and the authorization unused: the payment is owed again."""
    gone = payment.transaction_hash
    message = (
        f"transaction {gone} (block {payment.block_number}) left the canonical chain and the "
        "authorization is unused: the payment is settled again"
    )
    with transaction.atomic():
        if not subscription_services.payment_reopen_after_reorg(payment=payment, message=message):
            return False
        completed_job = (
            payment.jobs.filter(status=Job.Status.COMPLETED).order_by("-finished_at").first()
        )
        payment.refresh_from_db()
        try:
            new_job = job_services.job_create(payment=payment, source=Job.Source.REORG)
            note = f"{message} by job {new_job.pk}"
        except job_services.JobAlreadyOpen:
            note = f"{message} by the job already open"
        if completed_job is not None:
            job_services.job_note_reorg(job=completed_job, transaction_hash=gone, message=note)
    logger.warning("payment %s: %s", payment.pk, note)
    return True
