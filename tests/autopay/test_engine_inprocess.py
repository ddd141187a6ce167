"""The engine's decisions, run in this process against real PostgreSQL, Redis and anvil.

Queue behaviour (retries across messages, redelivery, crashes) is tested with real workers in
test_worker.py; here the job is processed by calling the engine directly.
"""

from __future__ import annotations

from typing import Any

import pytest

from autopay import engine
from autopay.chain.client import token_balance
from jobs.models import Job
from subscriptions import services
from subscriptions.models import Payment, Subscription
from tests.factories import SubscriptionFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


class _NoHooks:
    """Rail hooks that record nothing: the rail paying outside any job, as a lost attempt."""

    def prepared(self, **kwargs: Any) -> None: ...
    def progress(self, percent: int) -> None: ...
    def signed_transaction(self, tx_hash: str) -> None: ...
    def unsent_transaction(self, tx_hash: str) -> None: ...


def test_happy_path_moves_exact_amount_and_records(
    paying_subscription: Any, token_address: str
) -> None:
    subscription = paying_subscription(amount="12.5")
    payer_before = token_balance(token_address, subscription.payer_address)
    job = services.payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "completed"
    job.refresh_from_db()
    payment = job.payment
    payment.refresh_from_db()
    assert job.status == Job.Status.COMPLETED
    assert job.progress == 100
    assert job.attempts_made == 1
    assert job.result["success"] is True
    assert job.result["amount"] == "12.5"
    assert job.result["transactionHash"] == payment.transaction_hash
    assert payment.status == Payment.Status.COMPLETED
    assert token_balance(token_address, subscription.payer_address) == payer_before - 12_500_000
    assert token_balance(token_address, subscription.recipient_address) == 12_500_000
    subscription.refresh_from_db()
    assert subscription.next_payment_due_at == payment.period_end


def test_insufficient_balance_fails_at_once(paying_subscription: Any, token_address: str) -> None:
    subscription = paying_subscription(amount="50", balance_atomic=10 * 10**6)
    job = services.payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "failed"
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error_code == "insufficient_balance"
    assert job.attempts_made == 1
    assert job.payment.status == Payment.Status.FAILED
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.PAST_DUE
    assert token_balance(token_address, subscription.recipient_address) == 0


def test_without_a_rail_the_job_fails_honestly(paying_subscription: Any, settings: Any) -> None:
    settings.AUTOPAY_PAYMENT_RAIL = "none"
    subscription = paying_subscription()
    job = services.payment_trigger(subscription=subscription)

    engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error_code == "rail_not_configured"
    assert job.payment.status == Payment.Status.FAILED
    assert not job.payment.transaction_hash


def test_subscription_canceled_after_queueing_fails_without_charging(
    paying_subscription: Any, token_address: str
) -> None:
    subscription = paying_subscription(amount="2")
    job = services.payment_trigger(subscription=subscription)
    services.subscription_cancel(subscription=subscription)

    engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    job.refresh_from_db()
    assert job.error_code == "subscription_not_active"
    assert token_balance(token_address, subscription.recipient_address) == 0
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.CANCELED, "no dunning for a canceled one"


def test_a_wallet_whose_key_does_not_sign_for_the_payer_fails_with_invalid_signature(
    engine_settings: Any, user: Any, token_address: str, w3: Any, deployer: Any
) -> None:
    from eth_account import Account

    from autopay.chain.contracts import mint
    from autopay.custody import encrypt_private_key
    from tests.factories import PayerWalletFactory

    # The stored key belongs to another account than the wallet's address (a corrupt record).
    wallet = PayerWalletFactory.create(
        owner=user, encrypted_private_key=encrypt_private_key(bytes(Account.create().key))
    )
    mint(w3, token_address, deployer.key, str(wallet.address), 10 * 10**6)
    subscription = SubscriptionFactory.create(
        owner=user, wallet=wallet, payer_address=wallet.address, token_address=token_address
    )
    job = services.payment_trigger(subscription=subscription)

    engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error_code == "invalid_signature"
    assert job.attempts_made == 1
    assert token_balance(token_address, wallet.address) == 10 * 10**6


def test_a_period_already_settled_on_chain_is_recorded_not_paid_again(
    paying_subscription: Any, token_address: str, w3: Any
) -> None:
    """A racing or crashed attempt already used the period's authorization: the engine finds
    that transaction by its nonce instead of paying a second time."""
    from autopay.rails.x402_exact import X402ExactRail

    subscription = paying_subscription(amount="3")
    job = services.payment_trigger(subscription=subscription)
    payment = job.payment
    rail = X402ExactRail.from_settings()

    first = rail.pay(payment, _NoHooks())  # settles outside the job, as a lost attempt would
    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "completed"
    job.refresh_from_db()
    assert job.result["transactionHash"] == first.transaction_hash
    assert job.result["reconciled"] is True
    assert token_balance(token_address, subscription.recipient_address) == 3_000_000


def test_reconcile_completes_a_submitted_payment_the_chain_settled(
    paying_subscription: Any, token_address: str
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from autopay.rails.x402_exact import X402ExactRail
    from autopay.reconcile import payments_reconcile
    from jobs import services as job_services

    subscription = paying_subscription(amount="1")
    job = services.payment_trigger(subscription=subscription)

    settled = X402ExactRail.from_settings().pay(job.payment, _NoHooks())
    # The worker died after broadcasting; its job failed for good (no job in flight).
    job_services.job_fail(job=job, worker_id=None, code="worker_lost", message="lost")
    old = timezone.now() - timedelta(minutes=10)
    Payment.objects.filter(pk=job.payment_id).update(
        status=Payment.Status.SUBMITTED, transaction_hash=settled.transaction_hash, updated_at=old
    )

    assert payments_reconcile() == {"reconciled": 1}

    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    assert payment.transaction_hash == settled.transaction_hash
    job.refresh_from_db()
    assert job.status == Job.Status.COMPLETED
    assert token_balance(token_address, subscription.recipient_address) == 1_000_000


def test_reconcile_detects_a_transaction_that_disappeared(paying_subscription: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from autopay.reconcile import payments_reconcile
    from jobs import services as job_services

    subscription = paying_subscription(amount="1")
    job = services.payment_trigger(subscription=subscription)
    job_services.job_fail(job=job, worker_id=None, code="worker_lost", message="lost")
    Payment.objects.filter(pk=job.payment_id).update(
        status=Payment.Status.SUBMITTED,
        transaction_hash="0x" + "ab" * 32,  # never reached the chain
        updated_at=timezone.now() - timedelta(minutes=10),
    )

    assert payments_reconcile() == {"reconciled": 0}

    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.FAILED
    assert payment.error_code == "settlement_lost"
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.PAST_DUE, "the dunning schedule retries it"
