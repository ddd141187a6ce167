"""The engine's decisions, run in this process against real PostgreSQL, Redis and anvil.

Queue behaviour (retries across messages, redelivery, crashes) is tested with real workers in
test_worker.py; here the job is processed by calling the engine directly.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from autopay import engine
from autopay.chain.client import token_balance
from jobs.models import Job
from subscriptions import services
from subscriptions.models import Payment, Subscription
from tests.factories import SubscriptionFactory, new_address

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


@pytest.fixture
def paying_subscription(funded_wallet: Any, user: Any, token_address: str) -> Any:
    def make(amount: str = "12.5", balance_atomic: int = 1_000 * 10**6) -> Subscription:
        wallet = funded_wallet(balance_atomic)
        return SubscriptionFactory.create(
            owner=user,
            wallet=wallet,
            payer_address=wallet.address,
            recipient_address=new_address(),
            token_address=token_address,
            amount=Decimal(amount),
        )

    return make


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
