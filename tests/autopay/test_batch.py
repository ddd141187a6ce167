"""Batch settlement run in this process against real PostgreSQL, Redis and anvil: many payments
in one aggregate3 transaction, items that would fail classified and never sent, an item that
fails inside the mined transaction handed back to its job, progress reported in bulk.

Queue behaviour (duplicate and overlapping batch messages, SIGKILL at each stage) is tested
with real workers in test_batch_worker.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from web3 import Web3
from web3.types import RPCEndpoint

from autopay import engine
from autopay.chain.abi import AUTHORIZATION_USED_TOPIC
from autopay.chain.client import authorization_used, token_balance
from autopay.scan import scan_due
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.custody import decrypt_private_key, encrypt_private_key
from subscriptions.models import PayerWallet, Payment, Subscription
from subscriptions.webhooks.models import EventType, WebhookEndpoint, WebhookEvent
from tests.batching import confirm, settle
from tests.factories import PayerWalletFactory, SubscriptionFactory, new_address
from tests.infra import RpcProxy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


@pytest.fixture
def progress_written() -> Iterator[Callable[[], dict[str, list[int]]]]:
    """Every progress value each job row takes, in order, as PostgreSQL sees the writes (a
    trigger logs them), whichever statement wrote them."""
    table = Job._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE test_progress_log (id serial, job_id uuid, progress integer);"
            "CREATE FUNCTION test_log_progress() RETURNS trigger AS $$ BEGIN "
            "INSERT INTO test_progress_log (job_id, progress) VALUES (NEW.id, NEW.progress); "
            "RETURN NEW; END $$ LANGUAGE plpgsql;"
            f"CREATE TRIGGER test_progress AFTER UPDATE OF progress ON {table} FOR EACH ROW "
            "WHEN (OLD.progress IS DISTINCT FROM NEW.progress) "
            "EXECUTE FUNCTION test_log_progress();"
        )

    def written() -> dict[str, list[int]]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT job_id, progress FROM test_progress_log ORDER BY id")
            steps: dict[str, list[int]] = {}
            for job_id, progress in cursor.fetchall():
                steps.setdefault(str(job_id), []).append(progress)
            return steps

    try:
        yield written
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                f"DROP TRIGGER test_progress ON {table}; DROP FUNCTION test_log_progress();"
                "DROP TABLE test_progress_log;"
            )


def _wallets(count: int, user: Any, w3: Web3, token: str, deployer: Any, amount: int) -> list[Any]:
    from autopay.devtools.contracts import mint

    wallets = [PayerWalletFactory.create(owner=user) for _ in range(count)]
    for wallet in wallets:
        if amount:
            mint(w3, token, deployer.key, str(wallet.address), amount)
    return wallets


def _subscription(wallet: Any, token: str, amount: str, recipient: str | None = None) -> Any:
    return SubscriptionFactory.create(
        owner=wallet.owner,
        wallet=wallet,
        payer_address=wallet.address,
        recipient_address=recipient or new_address(),
        token_address=token,
        amount=Decimal(amount),
    )


def _scheduled_job_ids() -> list[str]:
    assert scan_due(publish=False).jobs_created > 0
    return [str(pk) for pk in Job.objects.order_by("created_at").values_list("pk", flat=True)]


def _used_in(w3: Web3, tx_hash: str) -> int:
    # Mined at once with automine, but another test of the session may have left the chain
    # mining on an interval: wait for the receipt rather than read it.
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)  # type: ignore[arg-type]
    return sum(
        1 for log in receipt["logs"] if "0x" + log["topics"][0].hex() == AUTHORIZATION_USED_TOPIC
    )


def test_a_batch_settles_in_one_transaction_with_progress_in_bulk(
    engine_settings: Any,
    user: Any,
    w3: Web3,
    token_address: str,
    deployer: Any,
    progress_written: Callable[[], dict[str, list[int]]],
) -> None:
    wallets = _wallets(3, user, w3, token_address, deployer, 100 * 10**6)
    # The owner has a webhook endpoint (disabled: events are kept, nothing is sent).
    WebhookEndpoint.objects.create(
        owner=user,
        url="https://hooks.example.com/autopay",
        enabled=False,
        encrypted_secret=encrypt_private_key(b"secret"),
    )
    recipients = [new_address() for _ in range(4)]
    subscriptions = [
        _subscription(wallets[index % 3], token_address, "1.5", recipients[index % 4])
        for index in range(24)
    ]
    job_ids = _scheduled_job_ids()

    sent = settle(job_ids)

    assert len(sent) == 1, "one transaction for the batch"
    assert sorted(sent[0].job_ids) == sorted(job_ids)
    payments = list(Payment.objects.all())
    assert {payment.status for payment in payments} == {Payment.Status.SUBMITTED}
    assert {payment.transaction_hash for payment in payments} == {sent[0].transaction_hash}
    assert all(payment.authorization_nonce for payment in payments)

    report = confirm(sent[0])

    assert report.completed == 24 and report.retry_in is None
    assert _used_in(w3, sent[0].transaction_hash) == 24
    steps = progress_written()
    for job in Job.objects.all():
        assert job.status == Job.Status.COMPLETED, job.error
        assert job.result is not None
        assert job.result["transactionHash"] == sent[0].transaction_hash
        assert job.result["amount"] == "1.5"
        assert steps[str(job.pk)] == [10, 30, 50, 80, 100]
    for payment in Payment.objects.all():
        assert payment.status == Payment.Status.COMPLETED
        assert payment.block_number is not None
    for wallet in wallets:
        assert token_balance(token_address, wallet.address) == 100 * 10**6 - 8 * 1_500_000
    assert sum(token_balance(token_address, r) for r in recipients) == 24 * 1_500_000
    for subscription in subscriptions:
        subscription.refresh_from_db()
        assert subscription.next_payment_due_at > timezone.now()
    # Each payment recorded in bulk is a payment.succeeded event, as one recorded alone.
    events = list(WebhookEvent.objects.filter(type=EventType.PAYMENT_SUCCEEDED))
    assert len(events) == 24
    assert {event.data["status"] for event in events} == {"completed"}
    assert {event.data["transaction_hash"] for event in events} == {sent[0].transaction_hash}
    # A second confirmation (a redelivered message) finds nothing left to record.
    assert confirm(sent[0]).completed == 0
    assert WebhookEvent.objects.count() == 24


def test_items_that_would_fail_are_classified_and_never_sent(
    engine_settings: Any, user: Any, other_user: Any, w3: Web3, token_address: str, deployer: Any
) -> None:
    good = _wallets(2, user, w3, token_address, deployer, 50 * 10**6)
    broke = _wallets(1, user, w3, token_address, deployer, 1 * 10**6)[0]
    paying = [_subscription(good[index % 2], token_address, "2") for index in range(6)]
    poor = _subscription(broke, token_address, "5")
    paid_alone = _subscription(good[0], token_address, "3")
    # A period settled alone first (a manual trigger); the scheduled batch then meets a used
    # authorization and records that settlement instead of paying again.
    manual = payment_trigger(subscription=paid_alone)
    assert engine.process_job(job_id=str(manual.pk), worker_id="alone").status == "completed"
    manual.payment.refresh_from_db()
    Payment.objects.filter(pk=manual.payment_id).update(
        status=Payment.Status.PENDING, transaction_hash=""
    )
    Job.objects.filter(pk=manual.pk).update(status=Job.Status.WAITING, attempts_made=0)
    # A subscription whose wallet is another user's: nothing is signed.
    foreign_wallet = PayerWalletFactory.create(owner=other_user)
    foreign = _subscription(good[1], token_address, "1")
    Subscription.objects.filter(pk=foreign.pk).update(wallet=foreign_wallet)
    canceled = _subscription(good[1], token_address, "1")
    job_ids = _scheduled_job_ids()  # the manual job too, waiting again
    assert str(manual.pk) in job_ids
    Subscription.objects.filter(pk=canceled.pk).update(status=Subscription.Status.CANCELED)
    Payment.objects.filter(subscription=foreign).update(wallet=foreign_wallet)

    sent = settle(job_ids)

    assert len(sent) == 1
    assert _used_in(w3, sent[0].transaction_hash) == 6, "only the good items are sent"
    assert confirm(sent[0]).completed == 6

    def job_of(subscription: Any) -> Job:
        return Job.objects.filter(subscription=subscription).latest("created_at")

    assert {job_of(s).status for s in paying} == {Job.Status.COMPLETED}
    assert (job_of(poor).status, job_of(poor).error_code) == ("failed", "insufficient_balance")
    poor.refresh_from_db()
    assert poor.status == Subscription.Status.PAST_DUE
    reconciled = job_of(paid_alone)
    assert reconciled.status == Job.Status.COMPLETED
    assert reconciled.result is not None and reconciled.result["reconciled"] is True
    assert reconciled.result["transactionHash"] == manual.payment.transaction_hash
    assert (job_of(foreign).status, job_of(foreign).error_code) == (
        "failed",
        "signer_unavailable",
    )
    assert job_of(canceled).error_code == "subscription_not_active"
    assert token_balance(token_address, broke.address) == 1 * 10**6
    assert token_balance(token_address, paid_alone.recipient_address) == 3 * 10**6


def test_an_item_failing_inside_the_mined_batch_goes_back_to_its_job(
    engine_settings: Any, user: Any, w3: Web3, token_address: str, deployer: Any
) -> None:
    wallets = _wallets(2, user, w3, token_address, deployer, 10 * 10**6)
    subscriptions = [_subscription(wallets[index % 2], token_address, "4") for index in range(4)]
    job_ids = _scheduled_job_ids()
    w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [False])
    try:
        sent = settle(job_ids)
        assert len(sent) == 1
        # Before the batch is mined, the first payer moves its money away (a transaction
        # that pays more for gas, so it is mined first): its two items fail in the batch.
        drained = PayerWallet.objects.get(pk=wallets[0].pk)
        key = decrypt_private_key(drained.encrypted_private_key)
        _transfer_all(w3, token_address, key, new_address())
        w3.provider.make_request(RPCEndpoint("evm_mine"), [])
    finally:
        w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [True])

    report = confirm(sent[0])

    assert report.completed == 2 and report.delayed == 2
    assert report.retries and sum(len(ids) for ids in report.retries.values()) == 2
    for subscription in subscriptions:
        job = Job.objects.get(subscription=subscription)
        if subscription.wallet_id == wallets[0].pk:
            assert (job.status, job.error_code) == ("delayed", "batch_item_failed")
            assert job.payment.status == Payment.Status.SUBMITTED, "its next attempt reconciles"
        else:
            assert job.status == Job.Status.COMPLETED
    # The next attempt, alone, finds the payer without funds: insufficient_balance.
    Job.objects.filter(status=Job.Status.DELAYED).update(next_attempt_at=timezone.now())
    for job in Job.objects.filter(status=Job.Status.DELAYED):
        assert engine.process_job(job_id=str(job.pk), worker_id="retry").status == "failed"
        job.refresh_from_db()
        assert job.error_code == "insufficient_balance"


def test_a_batch_broadcast_whose_reply_is_lost_is_found_by_hash_and_charged_once(
    rpc: RpcProxy, user: Any, w3: Web3, token_address: str, deployer: Any, relayer: Any
) -> None:
    """The node takes the batch transaction, then the connection drops before it answers (a
    fault injected at the network boundary: the proxy in front of anvil forwards
    eth_sendRawTransaction and closes the connection without a reply). The engine cannot know
    whether it was sent: the hash it wrote before the broadcast is what finds it."""
    wallets = _wallets(2, user, w3, token_address, deployer, 10 * 10**6)
    for index in range(4):
        _subscription(wallets[index % 2], token_address, "2")
    job_ids = _scheduled_job_ids()
    relayer_nonce = w3.eth.get_transaction_count(relayer.address)
    rpc.drop_reply_to = "eth_sendRawTransaction"
    w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [False])
    try:
        assert settle(job_ids) == [], "the broadcast failed, as far as the engine knows"

        (batch_hash,) = rpc.dropped_transactions()
        assert w3.eth.get_transaction(batch_hash)["blockNumber"] is None, "the node has it"
        for job in Job.objects.select_related("payment"):
            # Broadcast as far as anyone can tell: each waits for the chain, no attempt spent.
            assert (job.status, job.error_code) == ("delayed", "settlement_pending")
            assert job.payment.status == Payment.Status.SETTLEMENT_PENDING
            assert job.payment.transaction_hash == batch_hash

        # The next attempts, each job alone (as its retry message runs), while the batch
        # transaction is still pending: they wait for it and send nothing.
        _due_now()
        for job_id in job_ids:
            assert engine.process_job(job_id=job_id, worker_id="retry").status == "delayed"
        assert w3.eth.get_transaction_count(relayer.address, "pending") == relayer_nonce + 1
        w3.provider.make_request(RPCEndpoint("evm_mine"), [])
    finally:
        w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [True])

    _due_now()
    for job_id in job_ids:
        assert engine.process_job(job_id=job_id, worker_id="retry").status == "completed"

    assert w3.eth.get_transaction_receipt(batch_hash)["status"] == 1
    assert _used_in(w3, batch_hash) == 4
    assert w3.eth.get_transaction_count(relayer.address) == relayer_nonce + 1, "one transaction"
    for job in Job.objects.select_related("payment"):
        assert job.status == Job.Status.COMPLETED, job.error
        assert job.result is not None and job.result["transactionHash"] == batch_hash
        assert job.payment.status == Payment.Status.COMPLETED
        assert job.payment.transaction_hash == batch_hash
        assert authorization_used(
            token_address, job.payment.payer_address, job.payment.authorization_nonce, w3=w3
        )
    for wallet in wallets:
        assert token_balance(token_address, wallet.address, w3=w3) == 10 * 10**6 - 2 * 2 * 10**6


def _due_now() -> None:
    Job.objects.filter(status=Job.Status.DELAYED).update(next_attempt_at=timezone.now())


def _transfer_all(w3: Web3, token: str, key: bytes, to: str) -> None:
    from eth_account import Account

    from autopay.devtools.contracts import token_contract

    account = Account.from_key(key)
    w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [account.address, hex(10**18)])
    contract = token_contract(w3, token)
    balance = contract.functions.balanceOf(account.address).call()
    tx = contract.functions.transfer(Web3.to_checksum_address(to), balance).build_transaction(
        {  # type: ignore[arg-type]
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(account.address),
            "gas": 100_000,
            "maxFeePerGas": 1000 * 10**9,
            "maxPriorityFeePerGas": 500 * 10**9,
        }
    )
    w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)


def test_no_aggregate3_contract_is_the_operators_problem_and_charges_nothing(
    engine_settings: Any, user: Any, w3: Web3, token_address: str, deployer: Any
) -> None:
    wallet = _wallets(1, user, w3, token_address, deployer, 10 * 10**6)[0]
    for _ in range(3):
        _subscription(wallet, token_address, "1")
    engine_settings.CHAIN_MULTICALL_ADDRESS = new_address()  # nothing deployed there

    assert settle(_scheduled_job_ids()) == []

    for job in Job.objects.all():
        assert (job.status, job.error_code) == ("delayed", "configuration_error")
        assert job.attempts_made == 0, "waiting for the operator uses no attempt"
        assert "CHAIN_MULTICALL_ADDRESS" in job.error
    assert token_balance(token_address, wallet.address) == 10 * 10**6


def test_without_our_relayers_a_batch_is_its_jobs_one_by_one(
    engine_settings: Any, user: Any
) -> None:
    engine_settings.AUTOPAY_PAYMENT_RAIL = "none"
    for _ in range(3):
        SubscriptionFactory.create(owner=user, billing_anchor=timezone.now())

    assert settle(_scheduled_job_ids()) == []

    # The operator's configuration: every job waits, none is failed and no attempt is spent.
    assert {(job.status, job.error_code, job.attempts_made) for job in Job.objects.all()} == {
        ("delayed", "rail_not_configured", 0)
    }


def test_several_batches_in_flight_on_one_relayer_take_nonces_in_sequence(
    engine_settings: Any, user: Any, w3: Web3, token_address: str, deployer: Any
) -> None:
    from autopay.chain.relayer import get_relayer

    wallet = _wallets(1, user, w3, token_address, deployer, 10 * 10**6)[0]
    for _ in range(6):
        _subscription(wallet, token_address, "1")
    job_ids = _scheduled_job_ids()
    relayer = get_relayer().address
    first_nonce = w3.eth.get_transaction_count(relayer, "pending")  # type: ignore[arg-type]
    w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [False])
    try:
        # Three batches go out before any is mined: nobody waits for a confirmation.
        sent = [tx for start in (0, 2, 4) for tx in settle(job_ids[start : start + 2], f"w{start}")]
        nonces = [
            w3.eth.get_transaction(tx.transaction_hash)["nonce"]  # type: ignore[arg-type]
            for tx in sent
        ]
        assert nonces == [first_nonce, first_nonce + 1, first_nonce + 2]
        w3.provider.make_request(RPCEndpoint("evm_mine"), [])
    finally:
        w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [True])

    assert [confirm(tx).completed for tx in sent] == [2, 2, 2]
