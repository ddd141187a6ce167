"""Never "failed" while money may move: once a settlement was broadcast, the payment is not
failed until the chain has answered for it. In this process against PostgreSQL, Redis and a
real anvil; the RPC outage is a proxy in front of anvil that stops answering (the chain itself
goes on, as when a provider is down) or drops its reply to one broadcast."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from autopay import engine
from autopay.chain.client import token_balance
from autopay.reconcile import payments_reconcile
from jobs import services as job_services
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.models import Payment, Subscription
from tests.infra import RpcProxy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


def _due_now(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(next_attempt_at=timezone.now())


def test_rpc_down_after_broadcast_keeps_the_payment_pending_then_completes(
    rpc: RpcProxy, paying_subscription: Any, token_address: str, w3: Any
) -> None:
    subscription = paying_subscription(amount="3")
    charged_once = token_balance(token_address, subscription.payer_address, w3=w3) - 3 * 10**6
    job = payment_trigger(subscription=subscription)
    rpc.down_after = "eth_sendRawTransaction"  # mined by anvil; the engine cannot see it

    for _ in range(3):
        engine.process_job(job_id=str(job.pk), worker_id="w")
        _due_now(job)

    job.refresh_from_db()
    payment = Payment.objects.get(pk=job.payment_id)
    assert token_balance(token_address, subscription.payer_address, w3=w3) == charged_once
    assert payment.status == Payment.Status.SETTLEMENT_PENDING, payment.status
    assert payment.transaction_hash
    assert job.status == Job.Status.DELAYED and job.error_code == "settlement_pending"
    assert Subscription.objects.get(pk=subscription.pk).status == Subscription.Status.ACTIVE
    # The reconcile sweep leaves a payment alone while its own job still asks the chain.
    assert payments_reconcile(older_than_seconds=0)["reconciled"] == 0

    engine.process_job(job_id=str(job.pk), worker_id="w")  # still down: still waiting
    _due_now(job)
    assert Payment.objects.get(pk=payment.pk).status == Payment.Status.SETTLEMENT_PENDING

    rpc.down = False  # the RPC answers again
    outcome = engine.process_job(job_id=str(job.pk), worker_id="w")

    assert outcome.status == "completed"
    job.refresh_from_db()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.COMPLETED
    assert (job.status, job.error_code, job.error) == (Job.Status.COMPLETED, "", "")
    assert job.result is not None and job.result["transactionHash"] == payment.transaction_hash
    # The RPC outage after the broadcast spends no attempt: the job waits for the chain.
    outcomes = [attempt.outcome for attempt in job.attempts.order_by("started_at")]
    assert outcomes == ["settlement_pending"] * 4 + ["completed"]
    assert job.attempts_made == 1
    assert token_balance(token_address, subscription.payer_address, w3=w3) == charged_once


def test_a_broadcast_whose_reply_is_lost_is_found_by_its_hash_and_charged_once(
    rpc: RpcProxy, paying_subscription: Any, token_address: str, w3: Any, relayer: Any
) -> None:
    """The node takes the transaction, then the connection drops before it answers (a fault
    injected at the network boundary: the proxy in front of anvil forwards
    eth_sendRawTransaction and closes the connection without a reply)."""
    subscription = paying_subscription(amount="4")
    charged_once = token_balance(token_address, subscription.payer_address, w3=w3) - 4 * 10**6
    relayer_nonce = w3.eth.get_transaction_count(relayer.address)
    job = payment_trigger(subscription=subscription)
    rpc.drop_reply_to = "eth_sendRawTransaction"
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        assert engine.process_job(job_id=str(job.pk), worker_id="w").status == "delayed"

        (sent,) = rpc.dropped_transactions()
        assert w3.eth.get_transaction(sent)["blockNumber"] is None, "the node has it"
        payment = Payment.objects.get(pk=job.payment_id)
        # Broadcast (its hash kept), the reply lost: waiting for the chain, never failed.
        assert (payment.status, payment.transaction_hash) == (
            Payment.Status.SETTLEMENT_PENDING,
            sent,
        )
        # The next attempt, while it is pending, waits for it and sends nothing.
        _due_now(job)
        assert engine.process_job(job_id=str(job.pk), worker_id="w").status == "delayed"
        assert w3.eth.get_transaction_count(relayer.address, "pending") == relayer_nonce + 1
        w3.provider.make_request("evm_mine", [])
    finally:
        w3.provider.make_request("evm_setAutomine", [True])

    _due_now(job)
    assert engine.process_job(job_id=str(job.pk), worker_id="w").status == "completed"

    payment.refresh_from_db()
    assert (payment.status, payment.transaction_hash) == (Payment.Status.COMPLETED, sent)
    assert w3.eth.get_transaction_receipt(sent)["status"] == 1
    assert w3.eth.get_transaction_count(relayer.address) == relayer_nonce + 1, "one transaction"
    assert token_balance(token_address, subscription.payer_address, w3=w3) == charged_once


def test_a_job_failing_after_broadcast_leaves_the_payment_to_the_chain(
    rpc: RpcProxy, paying_subscription: Any, token_address: str, w3: Any
) -> None:
    subscription = paying_subscription(amount="2")
    job = payment_trigger(subscription=subscription)
    rpc.down_after = "eth_sendRawTransaction"
    engine.process_job(job_id=str(job.pk), worker_id="w")
    # The owner pauses the subscription meanwhile: the next attempt fails the job...
    Subscription.objects.filter(pk=subscription.pk).update(status=Subscription.Status.PAUSED)
    _due_now(job)
    engine.process_job(job_id=str(job.pk), worker_id="w")

    job.refresh_from_db()
    payment = Payment.objects.get(pk=job.payment_id)
    assert (job.status, job.error_code) == (Job.Status.FAILED, "subscription_not_active")
    # ...but not the payment, whose transaction may (and did) land.
    assert payment.status == Payment.Status.SETTLEMENT_PENDING
    assert payments_reconcile(older_than_seconds=0)["reconciled"] == 0, "RPC still down"

    rpc.down = False
    assert payments_reconcile(older_than_seconds=0)["reconciled"] == 1

    payment.refresh_from_db()
    job.refresh_from_db()
    assert payment.status == Payment.Status.COMPLETED
    assert (job.status, job.error_code, job.error) == (Job.Status.COMPLETED, "", "")


def test_a_worker_lost_after_broadcast_does_not_fail_the_payment(
    paying_subscription: Any,
) -> None:
    job = payment_trigger(subscription=paying_subscription(amount="1"))
    tx_hash = "0x" + "12" * 32
    Payment.objects.filter(pk=job.payment_id).update(
        status=Payment.Status.SUBMITTED, transaction_hash=tx_hash
    )
    Job.objects.filter(pk=job.pk).update(recoveries=3)
    assert job_services.job_claim(job_id=job.pk, worker_id="dead") is not None
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now())

    assert job_services.jobs_recover().failed == 1

    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.SETTLEMENT_PENDING
    assert Job.objects.get(pk=job.pk).error_code == "worker_lost"
    subscription = Subscription.objects.get(pk=job.subscription_id)
    assert subscription.status == Subscription.Status.ACTIVE, "not past_due: no failure"
