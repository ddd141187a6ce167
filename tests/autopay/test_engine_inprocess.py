"""The engine's decisions, run in this process against real PostgreSQL, Redis and anvil.

Queue behaviour (retries across messages, redelivery, crashes) is tested with real workers in
test_worker.py; here the job is processed by calling the engine directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from autopay import engine
from autopay.chain.client import token_balance
from autopay.rails.x402_exact import X402ExactRail
from autopay.signers import signer_for_payment
from jobs import services as job_services
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions import services
from subscriptions.models import Payment, Subscription
from tests.batching import settle_as_one_batch
from tests.factories import SubscriptionFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


def _steps(reported: list[int]) -> list[int]:
    """The progress steps a job went through (a value reported twice in a row counts once)."""
    return [
        value for index, value in enumerate(reported) if index == 0 or value != reported[index - 1]
    ]


@pytest.fixture
def progress_reported(monkeypatch: Any) -> list[int]:
    """Every progress value written to the job, in order; a completion counts as 100.

    A spy: the real services still do every write (and raise LeaseLost as they would); only
    values that were actually written are recorded."""
    reported: list[int] = []
    job_progress, job_complete = job_services.job_progress, job_services.job_complete

    def progress(*, job: Job, worker_id: str, progress: int) -> None:
        job_progress(job=job, worker_id=worker_id, progress=progress)
        reported.append(progress)

    def complete(*, job: Job, worker_id: str, result: dict[str, Any], **extra: Any) -> bool:
        completed = job_complete(job=job, worker_id=worker_id, result=result, **extra)
        if completed:
            reported.append(100)
        return completed

    monkeypatch.setattr(job_services, "job_progress", progress)
    monkeypatch.setattr(job_services, "job_complete", complete)
    return reported


@pytest.fixture
def chain_calls(monkeypatch: Any) -> dict[str, int]:
    """How many times the payer's key signed, the facilitator verified or settled, and the
    relayer sent a transaction (spies: the real code runs)."""
    from autopay.chain.relayer import Relayer
    from autopay.rails.x402_exact import _InProcessFacilitator
    from autopay.signers import ServerWalletSigner

    calls = {"sign": 0, "verify": 0, "settle": 0, "send": 0}

    def spy(owner: type, name: str, counter: str) -> None:
        real = getattr(owner, name)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls[counter] += 1
            return real(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    spy(ServerWalletSigner, "sign", "sign")
    spy(_InProcessFacilitator, "verify", "verify")
    spy(_InProcessFacilitator, "settle", "settle")
    spy(Relayer, "send_call", "send")
    return calls


def _relayer_nonces(w3: Any, redis_client: Any) -> tuple[int, int, bytes | None]:
    """The relayer's nonce as the chain (latest, pending) and our Redis bookkeeping see it."""
    from autopay.chain.relayer import get_relayer

    relayer = get_relayer()
    return (
        w3.eth.get_transaction_count(relayer.address, "latest"),
        w3.eth.get_transaction_count(relayer.address, "pending"),
        redis_client.get(relayer._nonce_key),
    )


class _NoHooks:
    """Rail hooks that record nothing: the rail paying outside any job, as a lost attempt
    (signing with the payment's own wallet, as the engine would)."""

    def __init__(self, payment: Payment) -> None:
        self.payment = payment

    def prepared(self, **kwargs: Any) -> None: ...
    def sign(self, authorization: Any) -> str:
        return signer_for_payment(
            wallet_id=self.payment.wallet_id,
            owner_id=self.payment.subscription.owner_id,
            payer_address=self.payment.payer_address,
        ).sign(authorization)

    def progress(self, step: int) -> None: ...
    def signed_transaction(self, tx_hash: str) -> None: ...
    def unsent_transaction(self, tx_hash: str) -> None: ...
    def settle_requested(self) -> None: ...
    def settle_refused(self) -> None: ...


def test_happy_path_moves_exact_amount_and_records(
    paying_subscription: Any, token_address: str, progress_reported: list[int], w3: Any
) -> None:
    subscription = paying_subscription(amount="12.5")
    payer_before = token_balance(token_address, subscription.payer_address)
    job = payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "completed"
    job.refresh_from_db()
    payment = job.payment
    payment.refresh_from_db()
    assert job.status == Job.Status.COMPLETED
    # validated, signed, submitted, confirmed, recorded: each step as the rail reports it.
    assert _steps(progress_reported) == [10, 30, 50, 80, 100]
    assert job.progress == 100
    assert job.attempts_made == 1
    assert job.result is not None
    assert job.result["success"] is True
    assert job.result["amount"] == "12.5"
    assert job.result["transactionHash"] == payment.transaction_hash
    assert payment.status == Payment.Status.COMPLETED
    assert token_balance(token_address, subscription.payer_address) == payer_before - 12_500_000
    assert token_balance(token_address, subscription.recipient_address) == 12_500_000
    subscription.refresh_from_db()
    assert subscription.next_payment_due_at == payment.period_end
    # The attempts ledger: the transaction and what its gas cost, from the receipt.
    (attempt,) = job.attempts.all()
    assert attempt.outcome == "completed" and attempt.worker == "test-worker"
    assert attempt.transaction_hashes == [payment.transaction_hash]
    receipt = w3.eth.get_transaction_receipt(payment.transaction_hash)
    assert attempt.gas_used == receipt["gasUsed"]
    assert attempt.fee_wei == receipt["gasUsed"] * receipt["effectiveGasPrice"]


def test_insufficient_balance_fails_at_once(
    paying_subscription: Any,
    token_address: str,
    progress_reported: list[int],
    chain_calls: dict[str, int],
) -> None:
    subscription = paying_subscription(amount="50", balance_atomic=10 * 10**6)
    job = payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "failed"
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error_code == "insufficient_balance"
    # Signed, then refused by verification: progress stops at the signing step.
    assert _steps(progress_reported) == [10, 30]
    assert job.progress == 30
    assert chain_calls["send"] == 0, "a doomed transfer is never broadcast"
    assert job.attempts_made == 1
    assert job.payment.status == Payment.Status.FAILED
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.PAST_DUE
    assert token_balance(token_address, subscription.recipient_address) == 0


def test_without_a_rail_the_job_waits_for_the_operator(
    paying_subscription: Any, settings: Any
) -> None:
    settings.AUTOPAY_PAYMENT_RAIL = "none"
    subscription = paying_subscription()
    job = payment_trigger(subscription=subscription)

    engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    job.refresh_from_db()
    assert (job.status, job.error_code, job.attempts_made) == (
        Job.Status.DELAYED,
        "rail_not_configured",
        0,
    )
    assert job.payment.status != Payment.Status.FAILED
    assert not job.payment.transaction_hash
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE, "never the customer's fault"


def test_subscription_canceled_after_queueing_fails_without_charging(
    paying_subscription: Any,
    token_address: str,
    progress_reported: list[int],
    chain_calls: dict[str, int],
) -> None:
    subscription = paying_subscription(amount="2")
    job = payment_trigger(subscription=subscription)
    services.subscription_cancel(subscription=subscription)

    engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    job.refresh_from_db()
    assert job.error_code == "subscription_not_active"
    # Refused at validation: progress never starts, nothing is signed.
    assert progress_reported == []
    assert job.progress == 0
    assert chain_calls["sign"] == 0
    assert token_balance(token_address, subscription.recipient_address) == 0
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.CANCELED, "no dunning for a canceled one"


def test_a_wallet_whose_key_does_not_sign_for_the_payer_fails_with_invalid_signature(
    engine_settings: Any, user: Any, token_address: str, w3: Any, deployer: Any
) -> None:
    from eth_account import Account

    from autopay.devtools.contracts import mint
    from subscriptions.custody import encrypt_private_key
    from tests.factories import PayerWalletFactory

    # The stored key belongs to another account than the wallet's address (a corrupt record).
    wallet = PayerWalletFactory.create(
        owner=user, encrypted_private_key=encrypt_private_key(bytes(Account.create().key))
    )
    mint(w3, token_address, deployer.key, str(wallet.address), 10 * 10**6)
    subscription = SubscriptionFactory.create(
        owner=user, wallet=wallet, payer_address=wallet.address, token_address=token_address
    )
    job = payment_trigger(subscription=subscription)

    engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error_code == "invalid_signature"
    assert job.attempts_made == 1
    assert token_balance(token_address, wallet.address) == 10 * 10**6


def test_a_period_already_settled_on_chain_is_recorded_not_paid_again(
    paying_subscription: Any,
    token_address: str,
    w3: Any,
    clean_redis: Any,
    progress_reported: list[int],
    chain_calls: dict[str, int],
) -> None:
    """A racing or crashed attempt already used the period's authorization: the engine asks
    the chain first (authorizationState), finds that transaction by its nonce and records it.
    Nothing is signed, verified or sent: no second broadcast, no gas burned on a replay."""
    from autopay.rails.x402_exact import X402ExactRail

    subscription = paying_subscription(amount="3")
    job = payment_trigger(subscription=subscription)
    payment = job.payment
    rail = X402ExactRail.from_settings()

    first = rail.pay(
        engine.payment_intent(payment), _NoHooks(payment)
    )  # settles outside the job, as a lost attempt would
    relayer_before = _relayer_nonces(w3, clean_redis)
    chain_calls.update(sign=0, verify=0, settle=0, send=0)
    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "completed"
    job.refresh_from_db()
    assert job.result is not None
    assert job.result["transactionHash"] == first.transaction_hash
    assert job.result["reconciled"] is True
    assert chain_calls == {"sign": 0, "verify": 0, "settle": 0, "send": 0}
    assert _relayer_nonces(w3, clean_redis) == relayer_before, "the relayer sent nothing"
    # Validated, then recorded: never signed (30) nor submitted (50).
    assert _steps(progress_reported) == [10, 80, 100]
    payment.refresh_from_db()
    assert payment.status == Payment.Status.COMPLETED
    assert payment.transaction_hash == first.transaction_hash
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
    job = payment_trigger(subscription=subscription)

    settled = X402ExactRail.from_settings().pay(
        engine.payment_intent(job.payment), _NoHooks(job.payment)
    )
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
    job = payment_trigger(subscription=subscription)
    job_services.job_fail(job=job, worker_id=None, code="worker_lost", message="lost")
    Payment.objects.filter(pk=job.payment_id).update(
        status=Payment.Status.SUBMITTED,
        transaction_hash="0x" + "ab" * 32,  # never reached the chain
        updated_at=timezone.now() - timedelta(minutes=10),
    )

    assert payments_reconcile() == {"reconciled": 0}

    # Nothing moved and it is not the customer's doing: the period is paid again by a new
    # job, and the subscription is not moved to dunning.
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    retry = Job.objects.filter(payment_id=job.payment_id).exclude(pk=job.pk).get()
    assert (retry.source, retry.status) == (Job.Source.RETRY, Job.Status.WAITING)
    assert engine.process_job(job_id=str(retry.pk), worker_id="test-worker").status == "completed"
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    assert payment.transaction_hash != "0x" + "ab" * 32


def _process_while_no_block_comes(w3: Any, job: Job, worker_id: str) -> engine.Outcome:
    """Process ``job`` while the chain mines nothing (a broadcast stays pending), then mine."""
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        return engine.process_job(job_id=str(job.pk), worker_id=worker_id)
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        w3.provider.make_request("evm_mine", [])


def _mined_but_not_recorded(job: Job, w3: Any, engine_settings: Any) -> str:
    """An earlier attempt broadcast, gave up waiting for a block (settlement pending), and its
    transaction was mined after: the payment has the hash, nobody has the receipt."""
    engine_settings.CHAIN_CONFIRMATION_TIMEOUT_SECONDS = 0.5
    assert _process_while_no_block_comes(w3, job, "earlier-worker").status == "delayed"
    Job.objects.filter(pk=job.pk).update(next_attempt_at=timezone.now())  # its retry is due
    return str(Payment.objects.get(pk=job.payment_id).transaction_hash)


def _settled_outside_the_job(job: Job, w3: Any, engine_settings: Any) -> str:
    """A lost or racing attempt used the period's authorization and recorded nothing: only the
    chain knows (authorizationState, then the AuthorizationUsed event)."""
    payment = job.payment
    return (
        X402ExactRail.from_settings()
        .pay(engine.payment_intent(payment), _NoHooks(payment))
        .transaction_hash
    )


@pytest.mark.parametrize(
    "earlier",
    [_mined_but_not_recorded, _settled_outside_the_job],
    ids=["earlier-attempt-mined-unrecorded", "settled-outside-the-job"],
)
def test_an_attempt_completing_by_reconciliation_records_the_transaction_and_its_cost(
    engine_settings: Any,
    paying_subscription: Any,
    w3: Any,
    api: Any,
    earlier: Callable[[Job, Any, Any], str],
) -> None:
    """The attempt that finds the settlement on chain is the one that records it in the
    attempts ledger: its transaction and what its gas cost, counted once for the job."""
    job = payment_trigger(subscription=paying_subscription(amount="1"))
    tx_hash = earlier(job, w3, engine_settings)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="reconciling-worker")

    assert outcome.status == "completed"
    job.refresh_from_db()
    assert job.result is not None
    assert (job.result["reconciled"], job.result["transactionHash"]) == (True, tx_hash)
    receipt = w3.eth.get_transaction_receipt(tx_hash)
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    attempt = job.attempts.get(worker="reconciling-worker")
    assert attempt.outcome == "completed"
    assert attempt.transaction_hashes == [tx_hash]
    assert (attempt.gas_used, attempt.fee_wei) == (receipt["gasUsed"], fee)
    assert [a.fee_wei for a in job.attempts.all() if a.fee_wei is not None] == [fee]
    # The same, as integrators see it.
    shown = api.get(f"/api/jobs/{job.pk}").json()["data"]["attempts"][-1]
    assert shown["outcome"] == "completed"
    assert shown["transactionHashes"] == [tx_hash]
    assert (shown["gasUsed"], shown["feeWei"]) == (receipt["gasUsed"], str(fee))


def test_a_batch_transaction_found_by_reconciliation_is_recorded_without_a_per_job_cost(
    engine_settings: Any, paying_subscription: Any, w3: Any
) -> None:
    """Its gas paid for every payment of the batch: no one job's attempt shows it as its own."""
    jobs = [payment_trigger(subscription=paying_subscription(amount="1")) for _ in range(2)]
    settle_as_one_batch([str(job.pk) for job in jobs])
    found = jobs[0]
    batch_hash = Payment.objects.get(pk=found.payment_id).transaction_hash
    # The batch's record of the first payment is lost; the chain still has it.
    Payment.objects.filter(pk=found.payment_id).update(
        status=Payment.Status.PENDING, transaction_hash=""
    )
    Job.objects.filter(pk=found.pk).update(status=Job.Status.WAITING, attempts_made=0)

    assert engine.process_job(job_id=str(found.pk), worker_id="reconciling-worker").status == (
        "completed"
    )

    attempt = Job.objects.get(pk=found.pk).attempts.get(worker="reconciling-worker")
    assert attempt.transaction_hashes == [batch_hash]
    assert (attempt.gas_used, attempt.fee_wei) == (None, None)
    assert w3.eth.get_transaction_receipt(batch_hash)["gasUsed"] > 0


# --- where progress stops when a step fails --------------------------------------------------


def test_a_payer_nobody_can_sign_for_stops_after_validation(
    engine_settings: Any,
    user: Any,
    token_address: str,
    progress_reported: list[int],
    chain_calls: dict[str, int],
) -> None:
    # No wallet holds the payer's key: validated, then nothing can be signed.
    subscription = SubscriptionFactory.create(owner=user, token_address=token_address)
    job = payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "failed"
    job.refresh_from_db()
    assert job.error_code == "signer_unavailable"
    assert _steps(progress_reported) == [10]
    assert job.progress == 10
    assert chain_calls["send"] == 0


def test_a_broadcast_the_node_refuses_stops_at_the_submit_step(
    engine_settings: Any,
    paying_subscription: Any,
    token_address: str,
    progress_reported: list[int],
) -> None:
    """A relayer without gas funds (its balance not checked before: no minimum): signed and
    submitted (50), refused by the node at the broadcast; the job waits for a funded relayer
    and the payment carries no hash."""
    from decimal import Decimal

    from eth_account import Account

    from autopay.chain import relayer as relayer_module

    subscription = paying_subscription(amount="1")
    engine_settings.RELAYER_MIN_BALANCE_ETH = Decimal(0)
    engine_settings.RELAYER_PRIVATE_KEY = "0x" + bytes(Account.create().key).hex()
    relayer_module._relayers.clear()
    job = payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    job.refresh_from_db()
    assert outcome.status == "delayed", job.error
    assert (job.error_code, job.attempts_made) == ("relayer_unfunded", 0)
    assert _steps(progress_reported) == [10, 30, 50]
    assert job.progress == 50
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.PROCESSING
    assert payment.transaction_hash == ""
    assert token_balance(token_address, subscription.recipient_address) == 0


def test_a_settlement_not_yet_mined_stops_at_the_submit_step_then_is_reconciled(
    engine_settings: Any,
    paying_subscription: Any,
    token_address: str,
    w3: Any,
    progress_reported: list[int],
    chain_calls: dict[str, int],
) -> None:
    """Broadcast, but no block comes within the confirmation timeout: progress stays at 50
    (never 80), the payment keeps its hash, and the next attempt records that transaction
    once it is mined instead of sending another."""
    engine_settings.CHAIN_CONFIRMATION_TIMEOUT_SECONDS = 0.5
    engine_settings.AUTOPAY_RETRY_BACKOFF_SECONDS = 0
    subscription = paying_subscription(amount="1")
    job = payment_trigger(subscription=subscription)

    outcome = _process_while_no_block_comes(w3, job, "test-worker")

    job.refresh_from_db()
    assert outcome.status == "delayed", job.error
    assert job.error_code == "settlement_pending"
    assert _steps(progress_reported) == [10, 30, 50]
    assert job.progress == 50
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.SUBMITTED
    sent_hash = payment.transaction_hash
    assert sent_hash
    assert chain_calls["send"] == 1

    progress_reported.clear()
    retried = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert retried.status == "completed"
    assert chain_calls["send"] == 1, "the mined transaction is recorded, not sent again"
    assert _steps(progress_reported) == [10, 80, 100]
    payment.refresh_from_db()
    assert payment.status == Payment.Status.COMPLETED
    assert payment.transaction_hash == sent_hash
    assert token_balance(token_address, subscription.recipient_address) == 1_000_000
