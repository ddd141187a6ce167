"""The batch path through real `celery worker` processes, Redis, PostgreSQL and anvil: duplicate
and overlapping batch messages, two workers racing for them, and a worker SIGKILLed before
sending, with its transaction in the mempool, and after it was mined. Each period is charged
exactly once, and every job ends completed."""

from __future__ import annotations

import time
from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.types import RPCEndpoint

from autopay.chain.abi import AUTHORIZATION_USED_TOPIC
from autopay.chain.client import token_balance
from autopay.chain.relayer import get_relayer
from jobs.models import Job
from jobs.queue import publish_scheduled_jobs
from subscriptions.models import Payment
from tests.batching import scheduled_jobs
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain, pytest.mark.worker]

# Short leases, so that recovery can take back a killed worker's jobs within the test.
KILLED = {"AUTOPAY_JOB_LEASE_SECONDS": "3", "LOG_LEVEL": "INFO"}


def _all_done() -> bool:
    return not Job.objects.filter(status__in=Job.OPEN_STATUSES).exists()


def _assert_each_paid_once(w3: Web3, token: str, payers: list[Any], count: int) -> None:
    jobs = list(Job.objects.all())
    assert len(jobs) == count
    assert {job.status for job in jobs} == {Job.Status.COMPLETED}, [
        (job.status, job.error_code, job.error) for job in jobs if job.status != "completed"
    ]
    used: dict[tuple[str, str], list[str]] = {}
    for log in w3.eth.get_logs(
        {
            "address": Web3.to_checksum_address(token),
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [AUTHORIZATION_USED_TOPIC],
        }
    ):
        key = ("0x" + log["topics"][1].hex()[-40:], "0x" + log["topics"][2].hex()[-64:])
        used.setdefault(key, []).append("0x" + log["transactionHash"].hex().removeprefix("0x"))
    for payment in Payment.objects.all():
        assert payment.status == Payment.Status.COMPLETED
        hashes = used[(payment.payer_address.lower(), payment.authorization_nonce.lower())]
        assert hashes == [payment.transaction_hash], "one transfer, the one recorded"
    per_payer = count // len(payers)
    for wallet in payers:
        assert token_balance(token, wallet.address) == 100 * 10**6 - per_payer * 2 * 10**6


def _pending(w3: Web3, tx_hash: str) -> bool:
    try:
        w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return False
    return True


def _automine(w3: Web3, on: bool) -> None:
    w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [on])


def test_duplicate_and_overlapping_batches_on_two_workers_charge_once(
    start_worker: Any, user: Any, w3: Web3, token_address: str, deployer: Any, engine_settings: Any
) -> None:
    payers, job_ids = scheduled_jobs(user, w3, token_address, deployer, count=30, wallets=3)
    start_worker(concurrency=2)
    start_worker(concurrency=2)

    # The same batch twice, two overlapping ones and the whole set: every job is in three or
    # four messages, which two workers (four processes) take at once.
    for ids in (job_ids[:20], job_ids[10:], job_ids[:20], job_ids):
        publish_scheduled_jobs(ids)
    wait_for(_all_done, timeout=90, interval=0.2)
    time.sleep(1.0)  # let the late duplicates land

    _assert_each_paid_once(w3, token_address, payers, 30)
    assert {job.attempts_made for job in Job.objects.all()} == {1}
    batches = {payment.transaction_hash for payment in Payment.objects.all()}
    assert len(batches) <= 4, "settled in a few batch transactions, not one per payment"


def test_worker_killed_before_sending_charges_once_after_recovery(
    start_worker: Any, user: Any, w3: Web3, token_address: str, deployer: Any, engine_settings: Any
) -> None:
    payers, job_ids = scheduled_jobs(user, w3, token_address, deployer, count=6, wallets=2)
    engine_settings.RELAYER_LOCK_TIMEOUT_SECONDS = 60
    held = _hold_relayer_lock()
    first = start_worker(extra_env={**KILLED, "RELAYER_LOCK_TIMEOUT_SECONDS": "60"})
    try:
        publish_scheduled_jobs(job_ids)
        # Signed and recorded (30 %), waiting for the relayer's nonce lock this test holds.
        wait_for(lambda: Job.objects.filter(progress=30).count() == 6, timeout=60, interval=0.05)
        first.kill()
    finally:
        held.release()
    assert not Payment.objects.exclude(transaction_hash="").exists(), "nothing was sent"
    assert set(Payment.objects.values_list("status", flat=True)) == {Payment.Status.PROCESSING}

    # The new worker's dispatcher takes the jobs back once the dead worker's leases expire.
    start_worker(extra_env=KILLED)
    wait_for(_all_done, timeout=60, interval=0.2)
    assert all(job.recoveries >= 1 for job in Job.objects.all()), "taken back from the dead"

    _assert_each_paid_once(w3, token_address, payers, 6)


def _hold_relayer_lock() -> Any:
    """The relayer's nonce lock, taken by the test (as a slow worker would hold it)."""
    from autopay.chain import relayer as relayer_module

    relayer_module._relayers.clear()
    relayer = get_relayer()
    lock = relayer._redis.lock(relayer._lock_key, timeout=120)
    assert lock.acquire(blocking=False)
    return lock


def test_worker_killed_after_mining_and_in_the_mempool_charges_once(
    start_worker: Any, user: Any, w3: Web3, token_address: str, deployer: Any, engine_settings: Any
) -> None:
    payers, job_ids = scheduled_jobs(user, w3, token_address, deployer, count=6, wallets=2)
    # A confirmation that misses its transaction looks again only after 30 s: long after the
    # worker is dead.
    first = start_worker(extra_env={**KILLED, "AUTOPAY_BATCH_CONFIRM_POLL_SECONDS": "30"})
    _automine(w3, False)
    try:
        publish_scheduled_jobs(job_ids[:3])
        # Its confirmation looked once, found nothing mined, and waits in the doomed worker.
        wait_for(lambda: first.log().count("Retry in 30") == 1)
        mined_hash = Payment.objects.exclude(transaction_hash="").values_list(
            "transaction_hash", flat=True
        )[0]
        w3.provider.make_request(RPCEndpoint("evm_mine"), [])  # batch 1 mined, not recorded

        publish_scheduled_jobs(job_ids[3:])
        pending_hash = wait_for(
            lambda: (
                Payment.objects.exclude(transaction_hash__in=["", mined_hash])
                .values_list("transaction_hash", flat=True)
                .first()
            ),
            timeout=60,
            interval=0.05,
        )
        wait_for(lambda: _pending(w3, pending_hash), timeout=30)
        wait_for(lambda: first.log().count("Retry in 30") == 2)
        first.kill()  # batch 1 mined and unrecorded, batch 2 in the mempool
    finally:
        _automine(w3, True)
    assert Payment.objects.filter(status=Payment.Status.SUBMITTED).count() == 6
    w3.provider.make_request(RPCEndpoint("evm_mine"), [])

    # The new worker's dispatcher takes the jobs back once the dead worker's leases expire.
    start_worker(extra_env=KILLED)
    wait_for(_all_done, timeout=60, interval=0.2)
    assert all(job.recoveries >= 1 for job in Job.objects.all()), "taken back from the dead"

    _assert_each_paid_once(w3, token_address, payers, 6)
    hashes = set(Payment.objects.values_list("transaction_hash", flat=True))
    assert hashes == {mined_hash, pending_hash}, "recovery recorded the batches' transactions"
    for job in Job.objects.all():
        assert job.result is not None and job.result["reconciled"] is True
