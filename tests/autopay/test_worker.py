"""Queue behaviour through real `celery worker` processes, real Redis, PostgreSQL and anvil:
retries with backoff, duplicate delivery, racing workers, SIGKILL mid-settlement, and many
workers sharing one relayer."""

from __future__ import annotations

import itertools
import time
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from web3 import Web3
from web3.types import RPCEndpoint

from autopay.chain.abi import AUTHORIZATION_USED_TOPIC
from autopay.chain.client import token_balance
from autopay.devtools.anvil import ANVIL_DEV_KEYS, AnvilProcess, free_port
from autopay.devtools.contracts import deploy_token, mint
from jobs.models import Job
from jobs.queue import publish_jobs
from jobs.services import payment_trigger
from subscriptions.models import Payment, Subscription
from tests.conftest import wait_for
from tests.factories import PayerWalletFactory, SubscriptionFactory, new_address

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain, pytest.mark.worker]


def _subscription(
    wallet: Any, token_address: str, amount: str = "7.25", **extra: Any
) -> Subscription:
    return SubscriptionFactory.create(
        owner=wallet.owner,
        wallet=wallet,
        payer_address=wallet.address,
        recipient_address=new_address(),
        token_address=token_address,
        amount=Decimal(amount),
        **extra,
    )


def _job_done(job: Job) -> Job | None:
    job.refresh_from_db()
    return job if job.status in (Job.Status.COMPLETED, Job.Status.FAILED) else None


def _transfers_for(w3: Web3, token_address: str, payer: str) -> int:
    """How many EIP-3009 authorizations of ``payer`` were used on-chain."""
    logs = w3.eth.get_logs(
        {
            "address": Web3.to_checksum_address(token_address),
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [AUTHORIZATION_USED_TOPIC, "0x" + "0" * 24 + payer[2:].lower()],
        }
    )
    return len(logs)


def test_worker_pays_with_exact_balance_deltas(
    start_worker: Any, funded_wallet: Any, token_address: str, w3: Web3
) -> None:
    wallet = funded_wallet(100 * 10**6)
    subscription = _subscription(wallet, token_address, amount="7.25")
    start_worker()

    job = payment_trigger(subscription=subscription)
    wait_for(lambda: _job_done(job), timeout=60)

    assert job.status == Job.Status.COMPLETED, job.error
    assert job.progress == 100 and job.attempts_made == 1
    assert job.result is not None
    assert job.result["amount"] == "7.25"
    assert token_balance(token_address, wallet.address) == 100 * 10**6 - 7_250_000
    assert token_balance(token_address, subscription.recipient_address) == 7_250_000
    assert _transfers_for(w3, token_address, wallet.address) == 1


def test_insufficient_balance_fails_at_once_with_its_code(
    start_worker: Any, funded_wallet: Any, token_address: str
) -> None:
    wallet = funded_wallet(1 * 10**6)
    subscription = _subscription(wallet, token_address, amount="5")
    start_worker()

    job = payment_trigger(subscription=subscription)
    wait_for(lambda: _job_done(job), timeout=60)

    assert job.status == Job.Status.FAILED
    assert job.error_code == "insufficient_balance"
    assert job.attempts_made == 1, "a permanent error is not retried"
    assert job.result == {
        "success": False,
        "error": "insufficient_balance",
        "message": job.error[:500],
    }
    assert Payment.objects.get(pk=job.payment_id).status == Payment.Status.FAILED
    assert token_balance(token_address, wallet.address) == 1 * 10**6


def test_same_message_delivered_twice_charges_once(
    start_worker: Any, funded_wallet: Any, token_address: str, w3: Web3
) -> None:
    wallet = funded_wallet(50 * 10**6)
    subscription = _subscription(wallet, token_address, amount="3")
    start_worker(concurrency=2)

    job = payment_trigger(subscription=subscription)
    publish_jobs([job.pk, job.pk, job.pk])  # redelivery on top of the trigger's own message
    wait_for(lambda: _job_done(job), timeout=60)
    time.sleep(1.0)  # let the duplicates land

    job.refresh_from_db()
    assert job.status == Job.Status.COMPLETED
    assert job.attempts_made == 1
    assert Job.objects.filter(payment=job.payment).count() == 1
    assert token_balance(token_address, wallet.address) == 47 * 10**6
    assert _transfers_for(w3, token_address, wallet.address) == 1


def test_two_workers_racing_for_one_job_charge_once(
    start_worker: Any, funded_wallet: Any, token_address: str, w3: Web3
) -> None:
    wallet = funded_wallet(50 * 10**6)
    subscriptions = [_subscription(wallet, token_address, amount="1") for _ in range(5)]
    start_worker()
    start_worker()

    jobs = []
    for subscription in subscriptions:
        job = payment_trigger(subscription=subscription)
        publish_jobs([job.pk])  # a second message for the same job, for the other worker
        jobs.append(job)
    for job in jobs:
        wait_for(lambda job=job: _job_done(job), timeout=60)  # type: ignore[misc]
    time.sleep(1.0)

    for job in jobs:
        job.refresh_from_db()
        assert job.status == Job.Status.COMPLETED
        assert job.attempts_made == 1
    assert token_balance(token_address, wallet.address) == 45 * 10**6
    assert _transfers_for(w3, token_address, wallet.address) == 5


def _on_own_chain(w3: Web3, user: Any, *, amount: str) -> tuple[str, Any, Subscription]:
    """A token deployed on a test's own chain, a wallet holding 20 of it, a subscription."""
    token_address = deploy_token(w3, ANVIL_DEV_KEYS[0])
    wallet = PayerWalletFactory.create(owner=user)
    mint(w3, token_address, ANVIL_DEV_KEYS[0], str(wallet.address), 20 * 10**6)
    return token_address, wallet, _subscription(wallet, token_address, amount=amount)


@pytest.fixture
def own_chain(tmp_path: Any) -> Any:
    """A chain of this test's own, so that it can be stopped and restarted with its state."""
    port = free_port()
    state = tmp_path / "anvil-state.json"
    node = AnvilProcess(port=port, state_file=state).start()
    holder = {"node": node}

    def restart() -> AnvilProcess:
        holder["node"] = AnvilProcess(port=port, state_file=state).start()
        return holder["node"]

    yield node, restart
    holder["node"].stop()


def test_rpc_down_is_waited_out_without_spending_attempts_then_paid_once(
    start_worker: Any, user: Any, own_chain: Any
) -> None:
    """The chain's RPC is down before anything is broadcast: the infrastructure's fault, never
    the customer's. The job waits (no attempt spent, backoff 2 s, 4 s, ... capped), the
    subscription is not moved, and the worker pays it by itself once the RPC answers."""
    node, restart = own_chain
    w3 = Web3(Web3.HTTPProvider(node.rpc_url, request_kwargs={"timeout": 10}))
    token_address, wallet, subscription = _on_own_chain(w3, user, amount="2")
    chain = {
        "CHAIN_RPC_URL": node.rpc_url,
        "TOKEN_ADDRESS": token_address,
        "CHAIN_RPC_TIMEOUT_SECONDS": "2",
        "AUTOPAY_FAULT_RETRY_MAX_SECONDS": "4",
    }
    start_worker(extra_env=chain)

    node.stop()  # the chain goes down (its state is saved)
    job = payment_trigger(subscription=subscription)
    # Longer than three attempts' backoff (2 s + 4 s): the job is still waiting, not failed.
    wait_for(lambda: job.attempts.filter(outcome="waiting").count() >= 3, timeout=60)
    job.refresh_from_db()
    assert (job.status, job.error_code, job.attempts_made) in {
        (Job.Status.DELAYED, "rpc_unavailable", 0),
        (Job.Status.ACTIVE, "rpc_unavailable", 1),  # caught in its next try
    }
    waits = [
        (later.started_at - earlier.finished_at).total_seconds()
        for earlier, later in itertools.pairwise(job.attempts.order_by("started_at"))
        if earlier.finished_at is not None
    ]
    assert 2.0 <= waits[0] < 4.5 and 4.0 <= waits[1] < 7.0, waits
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    assert Payment.objects.get(pk=job.payment_id).status != Payment.Status.FAILED

    restart()  # the chain comes back with its state: no retry needed, the job was waiting
    wait_for(lambda: _job_done(job), timeout=60)
    assert job.status == Job.Status.COMPLETED, job.error
    assert token_balance(token_address, wallet.address, w3=w3) == 18 * 10**6
    assert _transfers_for(w3, token_address, str(wallet.address)) == 1


def _broadcast_and_hold(w3: Web3, job: Job) -> Payment:
    """With mining off, wait until the worker has broadcast the job's transaction (it then
    waits for a receipt that cannot come while the test holds mining)."""
    payment = wait_for(
        lambda: Payment.objects.filter(pk=job.payment_id, status=Payment.Status.SUBMITTED).first(),
        timeout=60,
        interval=0.02,
    )
    wait_for(lambda: _pending_on_chain(w3, payment.transaction_hash), timeout=30)
    return payment


def test_sigkill_while_waiting_for_confirmation_charges_exactly_once_within_90s(
    start_worker: Any, user: Any, tmp_path: Any
) -> None:
    """At the default lease (30 s, renewed every 5 s) and recovery (every 2 s)."""
    node = AnvilProcess(port=free_port()).start()
    try:
        w3 = Web3(Web3.HTTPProvider(node.rpc_url, request_kwargs={"timeout": 10}))
        token_address, wallet, subscription = _on_own_chain(w3, user, amount="4")
        env = {"CHAIN_RPC_URL": node.rpc_url, "TOKEN_ADDRESS": token_address}
        first = start_worker(extra_env=env)

        # No block is mined until the worker is dead: it broadcasts, then waits for its receipt
        # for as long as the test needs, and nothing it does after sending can land first.
        w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [False])
        job = payment_trigger(subscription=subscription)
        payment = _broadcast_and_hold(w3, job)
        start_worker(extra_env=env)  # a live worker (its dispatcher recovers leases)
        first.kill()  # after broadcasting, before recording
        killed_at = time.monotonic()
        job.refresh_from_db()
        assert job.status == Job.Status.ACTIVE
        payment.refresh_from_db()
        assert payment.status == Payment.Status.SUBMITTED
        w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [True])
        w3.provider.make_request(RPCEndpoint("evm_mine"), [])

        wait_for(lambda: _job_done(job), timeout=90)
        recovered_in = time.monotonic() - killed_at

        assert job.status == Job.Status.COMPLETED, job.error
        assert recovered_in < 90, recovered_in
        assert [attempt.outcome for attempt in job.attempts.order_by("started_at")] == [
            "worker_lost",
            "completed",
        ]
        payment.refresh_from_db()
        assert payment.status == Payment.Status.COMPLETED
        assert token_balance(token_address, wallet.address, w3=w3) == 16 * 10**6
        assert _transfers_for(w3, token_address, str(wallet.address)) == 1
    finally:
        node.stop()


def test_a_live_worker_keeps_its_job_past_the_lease_by_its_heartbeat(
    start_worker: Any, user: Any
) -> None:
    node = AnvilProcess(port=free_port()).start()
    try:
        w3 = Web3(Web3.HTTPProvider(node.rpc_url, request_kwargs={"timeout": 10}))
        token_address, wallet, subscription = _on_own_chain(w3, user, amount="3")
        env = {
            "CHAIN_RPC_URL": node.rpc_url,
            "TOKEN_ADDRESS": token_address,
            "AUTOPAY_JOB_LEASE_SECONDS": "3",
            "AUTOPAY_JOB_HEARTBEAT_SECONDS": "0.5",
        }
        start_worker(extra_env=env)
        w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [False])
        job = payment_trigger(subscription=subscription)
        _broadcast_and_hold(w3, job)
        start_worker(extra_env=env)  # its dispatcher would take back an expired lease
        owner = Job.objects.get(pk=job.pk).lease_owner

        time.sleep(8)  # well past the 3 s lease: the worker is waiting for its receipt
        job.refresh_from_db()
        assert job.status == Job.Status.ACTIVE and job.lease_owner == owner
        w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [True])
        w3.provider.make_request(RPCEndpoint("evm_mine"), [])
        wait_for(lambda: _job_done(job), timeout=60)

        assert job.status == Job.Status.COMPLETED
        assert [attempt.outcome for attempt in job.attempts.all()] == ["completed"]
        assert _transfers_for(w3, token_address, str(wallet.address)) == 1
    finally:
        node.stop()


def _pending_on_chain(w3: Web3, tx_hash: str) -> bool:
    """The node holds the transaction (a worker killed now has broadcast it)."""
    from web3.exceptions import TransactionNotFound

    try:
        w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return False
    return True


def test_four_workers_settle_200_payments_without_nonce_failures(
    start_worker: Any, user: Any, w3: Web3, token_address: str, deployer: Any, engine_settings: Any
) -> None:
    wallets = [PayerWalletFactory.create(owner=user) for _ in range(20)]
    for wallet in wallets:
        mint(w3, token_address, deployer.key, str(wallet.address), 100 * 10**6)
    subscriptions = [
        _subscription(wallets[index % 20], token_address, amount="0.5") for index in range(200)
    ]
    for _ in range(4):
        start_worker()

    from autopay.scan import scan_due

    summary = scan_due()
    assert summary.jobs_created == 200

    def all_done() -> bool:
        return not Job.objects.filter(status__in=Job.OPEN_STATUSES).exists()

    wait_for(all_done, timeout=240, interval=0.5)
    failed = list(Job.objects.filter(status=Job.Status.FAILED).values_list("error_code", "error"))
    assert failed == []
    assert Job.objects.filter(status=Job.Status.COMPLETED).count() == 200
    for wallet in wallets:
        assert token_balance(token_address, wallet.address) == 95 * 10**6
    assert (
        sum(token_balance(token_address, s.recipient_address) for s in subscriptions) == 100 * 10**6
    )
    assert Subscription.objects.filter(next_payment_due_at__gt=timezone.now()).count() == 200


def test_no_private_key_in_api_admin_or_logs(
    start_worker: Any,
    api: Any,
    staff_user: Any,
    client: Any,
    engine_settings: Any,
    w3: Web3,
    token_address: str,
    deployer: Any,
    relayer_key: str,
) -> None:
    from subscriptions.custody import decrypt_private_key
    from subscriptions.models import PayerWallet

    created = api.post("/api/wallets/", {"label": "main"}, format="json")
    assert created.status_code == 201
    wallet = PayerWallet.objects.get(address=created.json()["address"])
    mint(w3, token_address, deployer.key, wallet.address, 10 * 10**6)
    key_hex = decrypt_private_key(wallet.encrypted_private_key).hex()
    secrets = [key_hex, wallet.encrypted_private_key, relayer_key.removeprefix("0x")]

    response = api.post(
        "/api/subscriptions/",
        {
            "service_name": "Secret test",
            "wallet": wallet.pk,
            "recipient_address": new_address(),
            "amount": "1.5",
            "token_address": token_address,
            "network": "eip155:31337",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    worker = start_worker(extra_env={"LOG_LEVEL": "DEBUG"})
    trigger = api.post(f"/api/subscriptions/{response.json()['id']}/trigger-payment")
    job_id = trigger.json()["data"]["jobId"]
    wait_for(
        lambda: api.get(f"/api/jobs/{job_id}").json()["data"]["status"] == "completed", timeout=60
    )
    # The worker logs the completion after committing it: wait for the log, not the row.
    wait_for(lambda: f"job {job_id} completed" in worker.log(), timeout=30)

    client.force_login(staff_user)
    pages = [
        api.get("/api/wallets/").content,
        api.get(f"/api/wallets/{wallet.pk}/").content,
        api.get(f"/api/jobs/{job_id}").content,
        api.get("/api/payments/").content,
        client.get("/admin/subscriptions/payerwallet/").content,
        client.get(f"/admin/subscriptions/payerwallet/{wallet.pk}/change/").content,
        client.get("/admin/jobs/job/").content,
        client.get("/admin/subscriptions/payment/").content,
    ]
    log = worker.log()
    for secret in secrets:
        for text in [*pages, log.encode()]:
            assert secret.lower().encode() not in text.lower()
