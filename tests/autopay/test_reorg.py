"""Reorg safety on anvil: a completed payment is re-verified until CHAIN_FINALITY_BLOCKS deep;
when its transaction leaves the canonical chain (evm_snapshot / evm_revert) the payment is
settled again, once, with the same derived authorization nonce."""

from __future__ import annotations

from typing import Any

import pytest
from eth_typing import HexStr
from web3 import Web3
from web3.types import RPCEndpoint

from autopay import engine
from autopay.chain.abi import AUTHORIZATION_USED_TOPIC
from autopay.chain.client import token_balance
from autopay.finality import payments_verify_finality
from jobs.models import Job, JobAttempt
from jobs.services import payment_trigger
from subscriptions.models import Payment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


def _mine(w3: Web3, blocks: int) -> None:
    for _ in range(blocks):
        w3.provider.make_request(RPCEndpoint("evm_mine"), [])


def _settlements(w3: Web3, token_address: str, payer: str) -> list[Any]:
    """The payer's EIP-3009 authorizations used on the canonical chain."""
    return list(
        w3.eth.get_logs(
            {
                "address": Web3.to_checksum_address(token_address),
                "fromBlock": 0,
                "toBlock": "latest",
                "topics": [AUTHORIZATION_USED_TOPIC, "0x" + "0" * 24 + payer[2:].lower()],
            }
        )
    )


@pytest.fixture
def finality(engine_settings: Any) -> int:
    engine_settings.CHAIN_FINALITY_BLOCKS = 3
    return 3


def test_a_completed_payment_becomes_final_once_deep_enough(
    finality: int, paying_subscription: Any, w3: Web3
) -> None:
    job = payment_trigger(subscription=paying_subscription(amount="1"))
    engine.process_job(job_id=str(job.pk), worker_id="w")
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED and payment.finalized_at is None

    assert payments_verify_finality()["finalized"] == 0, "one block deep: not final yet"
    _mine(w3, finality)
    assert payments_verify_finality()["finalized"] == 1

    payment.refresh_from_db()
    assert payment.finalized_at is not None
    assert payments_verify_finality() == {"finalized": 0, "moved": 0, "reorged": 0}


def test_a_payment_whose_transaction_is_reorganised_away_is_settled_again_once(
    finality: int, paying_subscription: Any, w3: Web3, token_address: str
) -> None:
    subscription = paying_subscription(amount="4")
    payer = subscription.payer_address
    before = token_balance(token_address, payer, w3=w3)
    snapshot = w3.provider.make_request(RPCEndpoint("evm_snapshot"), [])["result"]
    job = payment_trigger(subscription=subscription)
    engine.process_job(job_id=str(job.pk), worker_id="w")
    payment = Payment.objects.get(pk=job.payment_id)
    gone_hash, nonce = payment.transaction_hash, payment.authorization_nonce
    assert w3.eth.get_transaction_receipt(HexStr(gone_hash))["status"] == 1
    assert payment.status == Payment.Status.COMPLETED

    # The chain reorganises: the block holding the settlement is replaced by others.
    assert w3.provider.make_request(RPCEndpoint("evm_revert"), [snapshot])["result"]
    _mine(w3, finality)
    assert token_balance(token_address, payer, w3=w3) == before, "the transfer is undone"

    summary = payments_verify_finality()  # its block is deep enough now: checked

    assert summary["reorged"] == 1
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING and payment.transaction_hash == ""
    assert payment.error_code == "chain_reorg"
    resettle = Job.objects.get(payment=payment, source=Job.Source.REORG)
    assert resettle.status == Job.Status.WAITING
    note = JobAttempt.objects.get(job=job, outcome=JobAttempt.Outcome.REORGED)
    assert note.transaction_hashes == [gone_hash] and str(resettle.pk) in note.error_message
    assert payments_verify_finality()["reorged"] == 0, "settled again once, not twice"

    engine.process_job(job_id=str(resettle.pk), worker_id="w")

    payment.refresh_from_db()
    assert payment.status == Payment.Status.COMPLETED
    # (Signed within the same second, on the same relayer nonce, it may even be the very same
    # transaction; what matters is that it is on the canonical chain now.)
    assert w3.eth.get_transaction_receipt(HexStr(payment.transaction_hash))["status"] == 1
    assert payment.authorization_nonce == nonce, "the same derived nonce"
    assert token_balance(token_address, payer, w3=w3) == before - 4 * 10**6
    (settled,) = _settlements(w3, token_address, payer)
    assert "0x" + bytes(settled["transactionHash"]).hex().removeprefix("0x") == (
        payment.transaction_hash
    )
    _mine(w3, finality)
    assert payments_verify_finality()["finalized"] == 1


def test_a_reorganised_transaction_mined_again_is_followed_to_its_new_block(
    finality: int, paying_subscription: Any, w3: Web3
) -> None:
    job = payment_trigger(subscription=paying_subscription(amount="2"))
    engine.process_job(job_id=str(job.pk), worker_id="w")
    payment = Payment.objects.get(pk=job.payment_id)
    raw = w3.provider.make_request(
        RPCEndpoint("eth_getRawTransactionByHash"), [payment.transaction_hash]
    )["result"]
    original_block = payment.block_number
    assert original_block is not None
    # Undo the block, then the same transaction is mined again in a later block.
    snapshot_before = original_block - 1
    w3.provider.make_request(RPCEndpoint("anvil_rollback"), [1])
    assert w3.eth.block_number == snapshot_before
    _mine(w3, 1)
    w3.eth.send_raw_transaction(raw)
    _mine(w3, finality)

    assert payments_verify_finality()["moved"] == 1

    payment.refresh_from_db()
    assert payment.status == Payment.Status.COMPLETED
    assert payment.block_number == original_block + 1
    _mine(w3, 1)
    assert payments_verify_finality()["finalized"] == 1


def test_a_batch_transaction_is_read_once_for_all_its_payments(
    finality: int,
    rpc: Any,
    engine_settings: Any,
    user: Any,
    w3: Web3,
    token_address: str,
    deployer: Any,
) -> None:
    """The sweep reads one receipt per transaction, never one per payment: the 6 payments of
    a batch cost one eth_getTransactionReceipt, and are finalized together."""
    from tests.batching import confirm, scheduled_jobs, settle

    _, job_ids = scheduled_jobs(user, w3, token_address, deployer, count=6, wallets=1)
    (sent,) = settle(job_ids)
    assert confirm(sent).completed == 6
    _mine(w3, finality)

    rpc.calls.clear()
    assert payments_verify_finality()["finalized"] == 6

    assert rpc.calls["eth_getTransactionReceipt"] == 1, dict(rpc.calls)
    assert not Payment.objects.filter(finalized_at__isnull=True).exists()
    assert payments_verify_finality() == {"finalized": 0, "moved": 0, "reorged": 0}
