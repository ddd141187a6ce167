"""The relayer against a live anvil and Redis: nonce gaps heal, lock contention is transient,
and failures inside the SDK's settle keep their real classification."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from autopay import engine
from autopay.chain.relayer import Relayer, get_relayer
from jobs.models import Job
from jobs.services import payment_trigger

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


def test_a_nonce_gap_left_by_dropped_transactions_heals(
    engine_settings: Any,
    paying_subscription: Any,
    w3: Any,
    clean_redis: Any,
) -> None:
    relayer = get_relayer()
    pending = w3.eth.get_transaction_count(relayer.address, "pending")
    # Three sends the chain never kept (evicted from the mempool): the stored next nonce is
    # ahead of anything the node knows.
    clean_redis.set(relayer._nonce_key, pending + 3)
    subscription = paying_subscription(amount="1", balance_atomic=10 * 10**6)
    job = payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "completed"
    assert w3.eth.get_transaction_count(relayer.address, "latest") == pending + 1


def test_relayer_lock_contention_is_transient_not_a_failure(
    engine_settings: Any, paying_subscription: Any, clean_redis: Any
) -> None:
    engine_settings.RELAYER_LOCK_TIMEOUT_SECONDS = 0.2
    from autopay.chain import relayer as relayer_module

    relayer_module._relayers.clear()
    relayer = get_relayer()
    subscription = paying_subscription(amount="1", balance_atomic=10 * 10**6)
    job = payment_trigger(subscription=subscription)
    held = clean_redis.lock(relayer._lock_key, timeout=30)
    assert held.acquire(blocking=False)
    try:
        outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")
    finally:
        held.release()

    job.refresh_from_db()
    assert outcome.status == "delayed", job.error
    assert job.status == Job.Status.DELAYED
    assert job.error_code == "relayer_nonce_conflict"
    assert job.payment.status != "failed"


def test_concurrent_senders_on_one_relayer_key_never_share_a_nonce(
    engine_settings: Any, anvil: Any, relayer_key: str, w3: Any, clean_redis: Any, monkeypatch: Any
) -> None:
    """Several senders (each its own Relayer, web3 and Redis client, as in separate worker
    processes) send at once with one relayer key: the Redis lock gives every transaction its
    own nonce, first time. Without the lock they read the same pending count and collide."""
    senders, sends_each = 6, 5
    relayer_address = w3.eth.account.from_key(relayer_key).address
    signed_nonces: list[int] = []
    record = threading.Lock()
    sign_transaction = LocalAccount.sign_transaction

    def counted(self: LocalAccount, transaction: dict[str, Any], *args: Any) -> Any:
        if self.address == relayer_address:
            with record:
                signed_nonces.append(int(transaction["nonce"]))
        return sign_transaction(self, transaction, *args)

    monkeypatch.setattr(LocalAccount, "sign_transaction", counted)

    def new_relayer() -> Relayer:
        return Relayer(
            private_key=relayer_key,
            w3=Web3(Web3.HTTPProvider(anvil.rpc_url, request_kwargs={"timeout": 30})),
            redis_client=redis.Redis.from_url(engine_settings.REDIS_URL),
            chain_id=31337,
            lock_timeout=30,
        )

    relayers = [new_relayer() for _ in range(senders)]
    start = w3.eth.get_transaction_count(relayer_address, "pending")
    barrier = threading.Barrier(senders)
    sent: list[str] = []
    failures: list[BaseException] = []

    def send(relayer: Relayer) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(sends_each):
                # A plain call to an account: cheap, always succeeds, needs a nonce like any.
                tx_hash = relayer.send_call(to=Account.create().address, data="0x")
                with record:
                    sent.append(tx_hash)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=send, args=(relayer,)) for relayer in relayers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    total = senders * sends_each
    assert failures == []
    assert len(sent) == total
    duplicates = sorted(nonce for nonce in set(signed_nonces) if signed_nonces.count(nonce) > 1)
    assert duplicates == [], "one nonce was handed to more than one transaction"
    assert sorted(signed_nonces) == list(range(start, start + total))
    mined = [w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30) for tx_hash in sent]
    assert all(receipt["status"] == 1 for receipt in mined)
    assert sorted(w3.eth.get_transaction(tx_hash)["nonce"] for tx_hash in sent) == list(
        range(start, start + total)
    )
    assert w3.eth.get_transaction_count(relayer_address, "latest") == start + total
