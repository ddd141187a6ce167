"""Fee bumping on anvil: a settlement still pending RELAYER_FEE_BUMP_BLOCKS blocks after it
was sent is replaced (same nonce, fees raised by at least the replacement minimum, capped by
RELAYER_MAX_FEE_GWEI), and whichever of the two lands is recorded.

The stuck transaction is a low-fee one: after it is sent, the test raises the chain's base fee
above its fee cap (anvil then drops it from its pool, as a node evicts underpriced
transactions) and mines blocks by hand. Dropped, it leaves the node's pending count at its
nonce; so one test keeps it in the pool instead (blocks too small for it go by), where only
the stuck transaction's own nonce replaces it."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from eth_typing import HexStr
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.types import RPCEndpoint

from autopay import engine
from autopay.chain import relayer as relayer_module
from autopay.chain.abi import AUTHORIZATION_USED_TOPIC
from autopay.chain.client import authorization_used, token_balance
from autopay.chain.relayer import SentTransaction
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.models import Payment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]

GWEI = 10**9


def _rpc(w3: Web3, method: str, *params: Any) -> Any:
    return w3.provider.make_request(RPCEndpoint(method), list(params)).get("result")


def _pending(w3: Web3, tx_hash: str) -> bool:
    try:
        return w3.eth.get_transaction(HexStr(tx_hash))["blockNumber"] is None
    except TransactionNotFound:
        return False


def _wait(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def manual_mining(engine_settings: Any, w3: Web3) -> Iterator[Any]:
    engine_settings.RELAYER_FEE_BUMP_BLOCKS = 2
    engine_settings.CHAIN_CONFIRMATION_TIMEOUT_SECONDS = 40
    relayer_module._relayers.clear()
    base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
    try:
        yield lambda: _rpc(w3, "evm_setAutomine", False)
    finally:
        _rpc(w3, "evm_setAutomine", True)
        _rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(base_fee))
        _rpc(w3, "evm_mine")
        relayer_module._relayers.clear()


def _in_background(script: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            script()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _process_while(
    job: Job, chain: Callable[[], None], *, done: threading.Event | None = None
) -> engine.Outcome:
    """Process the job while ``chain`` plays the chain's part in the background (``done`` is
    set when the job's attempt ends)."""
    thread, errors = _in_background(chain)
    try:
        outcome = engine.process_job(job_id=str(job.pk), worker_id="w")
    finally:
        if done is not None:
            done.set()
        thread.join(30)
    assert not errors, errors
    return outcome


def _submitted_hash(job: Job) -> str:
    payment = Payment.objects.get(pk=job.payment_id)
    return payment.transaction_hash if payment.status == Payment.Status.SUBMITTED else ""


def _broadcast(w3: Web3, job: Job) -> str:
    """The payment's first transaction, once it is in the node's pool."""
    original = _wait(lambda: _submitted_hash(job))
    _wait(lambda: _pending(w3, original))
    return str(original)


def _price_out(w3: Web3, tx_hash: str) -> None:
    """Raise the base fee far above the transaction's fee cap and mine: it is stuck (dropped)."""
    max_fee = int(w3.eth.get_transaction(HexStr(tx_hash))["maxFeePerGas"])
    _rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(max_fee * 10))
    _rpc(w3, "evm_mine")
    assert not _pending(w3, tx_hash)


def _settlements(w3: Web3, token_address: str, payer: str) -> int:
    return len(
        w3.eth.get_logs(
            {
                "address": Web3.to_checksum_address(token_address),
                "fromBlock": 0,
                "toBlock": "latest",
                "topics": [AUTHORIZATION_USED_TOPIC, "0x" + "0" * 24 + payer[2:].lower()],
            }
        )
    )


def test_a_stuck_low_fee_settlement_is_replaced_and_the_replacement_recorded(
    manual_mining: Any, paying_subscription: Any, w3: Web3, token_address: str
) -> None:
    subscription = paying_subscription(amount="5")
    before = token_balance(token_address, subscription.payer_address, w3=w3)
    manual_mining()  # from here on, blocks are mined by the test only
    job = payment_trigger(subscription=subscription)
    done = threading.Event()
    seen: dict[str, str] = {}

    def chain() -> None:
        original = _broadcast(w3, job)
        seen["original"] = original
        _price_out(w3, original)
        while not done.is_set():  # blocks go by; the relayer replaces its transaction
            _rpc(w3, "evm_mine")
            time.sleep(0.3)

    outcome = _process_while(job, chain, done=done)

    assert outcome.status == "completed"
    original = seen["original"]
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    assert payment.transaction_hash != original
    first = w3.eth.get_transaction(HexStr(original)) if _known(w3, original) else None
    landed = w3.eth.get_transaction(HexStr(payment.transaction_hash))
    receipt = w3.eth.get_transaction_receipt(HexStr(payment.transaction_hash))
    assert receipt["status"] == 1 and payment.block_number == receipt["blockNumber"]
    assert first is None, "the stuck transaction is gone"
    (attempt,) = Job.objects.get(pk=job.pk).attempts.all()
    assert attempt.transaction_hashes[0] == original
    assert attempt.transaction_hashes[-1] == payment.transaction_hash
    assert attempt.fee_wei == receipt["gasUsed"] * receipt["effectiveGasPrice"]
    cap = int(settings.RELAYER_MAX_FEE_GWEI * GWEI)
    assert landed["maxFeePerGas"] <= cap
    assert token_balance(token_address, subscription.payer_address, w3=w3) == before - 5 * 10**6
    assert _settlements(w3, token_address, subscription.payer_address) == 1


def _known(w3: Web3, tx_hash: str) -> bool:
    try:
        w3.eth.get_transaction(HexStr(tx_hash))
        return True
    except TransactionNotFound:
        return False


def test_when_the_original_lands_after_all_the_original_is_recorded(
    manual_mining: Any, paying_subscription: Any, w3: Web3, token_address: str
) -> None:
    subscription = paying_subscription(amount="6")
    before = token_balance(token_address, subscription.payer_address, w3=w3)
    manual_mining()
    job = payment_trigger(subscription=subscription)
    seen: dict[str, Any] = {}

    def chain() -> None:
        original = _broadcast(w3, job)
        seen["original"] = original
        raw = _rpc(w3, "eth_getRawTransactionByHash", original)
        base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
        _price_out(w3, original)

        def replaced() -> str:
            _rpc(w3, "evm_mine")
            time.sleep(0.3)
            current = _submitted_hash(job)
            return current if current and current != original else ""

        replacement = _wait(replaced)
        _wait(lambda: _pending(w3, replacement))
        seen["replacement"] = w3.eth.get_transaction(HexStr(replacement))
        # Another node had the original: it is the one that gets mined.
        _rpc(w3, "anvil_dropTransaction", replacement)
        _rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(base_fee))
        w3.eth.send_raw_transaction(HexStr(raw))
        _rpc(w3, "evm_mine")

    outcome = _process_while(job, chain)

    assert outcome.status == "completed"
    original, replacement = seen["original"], seen["replacement"]
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    assert payment.transaction_hash == original, "the one that landed"
    first = w3.eth.get_transaction(HexStr(original))
    assert replacement["nonce"] == first["nonce"], "a replacement: the same nonce"
    assert replacement["maxFeePerGas"] >= math.ceil(first["maxFeePerGas"] * 1.15)
    assert replacement["maxPriorityFeePerGas"] >= math.ceil(first["maxPriorityFeePerGas"] * 1.15)
    hashes = Job.objects.get(pk=job.pk).attempts.get().transaction_hashes
    assert hashes[0] == original and len(hashes) == 2
    assert token_balance(token_address, subscription.payer_address, w3=w3) == before - 6 * 10**6
    assert _settlements(w3, token_address, subscription.payer_address) == 1


@pytest.fixture
def small_blocks(w3: Web3) -> Iterator[Callable[[int], None]]:
    """``small_blocks(gas)`` mines a block too small for a transaction of ``gas``: anvil leaves
    such a transaction waiting in its pool (where a node keeps one a busy network does not pick
    up), ready, so the relayer's pending count stays ahead of it while blocks go by."""
    gas_limit = int(w3.eth.get_block("latest")["gasLimit"])

    def mine(gas: int) -> None:
        _rpc(w3, "evm_setBlockGasLimit", hex(gas - 1))
        try:
            _rpc(w3, "evm_mine")
        finally:
            # Back at once: a node refuses a transaction bigger than its next block, and the
            # relayer's replacement has the same gas.
            _rpc(w3, "evm_setBlockGasLimit", hex(gas_limit))

    try:
        yield mine
    finally:
        _rpc(w3, "evm_setBlockGasLimit", hex(gas_limit))


def test_a_settlement_stuck_in_the_pool_is_replaced_on_its_own_nonce_and_lands_once(
    manual_mining: Any,
    small_blocks: Callable[[int], None],
    paying_subscription: Any,
    w3: Web3,
    token_address: str,
    relayer: Any,
) -> None:
    subscription = paying_subscription(amount="7")
    before = token_balance(token_address, subscription.payer_address, w3=w3)
    relayer_nonce = w3.eth.get_transaction_count(relayer.address)
    manual_mining()
    job = payment_trigger(subscription=subscription)
    seen: dict[str, Any] = {}

    def chain() -> None:
        original = _broadcast(w3, job)
        seen["original"] = w3.eth.get_transaction(HexStr(original))
        gas = int(seen["original"]["gas"])

        def replaced() -> str:
            small_blocks(gas)  # a block goes by without it
            time.sleep(0.3)
            current = _submitted_hash(job)
            if current and current != original and _pending(w3, current):
                return current
            # Not replaced yet: the stuck one is still in the pool, ahead of the pending count.
            assert _pending(w3, original), "the stuck transaction stays in the pool"
            seen["pending_count"] = w3.eth.get_transaction_count(relayer.address, "pending")
            return ""

        replacement = _wait(replaced)
        seen["replacement"] = w3.eth.get_transaction(HexStr(replacement))
        _rpc(w3, "evm_mine")  # a block with room: one of them lands

    outcome = _process_while(job, chain)

    original, replacement = seen["original"], seen["replacement"]
    # The case where a node's pending count cannot stand in for the stuck transaction's nonce.
    assert seen["pending_count"] == original["nonce"] + 1
    assert replacement["nonce"] == original["nonce"], "a replacement: the same nonce"
    assert outcome.status == "completed"
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    landed = "0x" + bytes(replacement["hash"]).hex().removeprefix("0x")
    assert payment.transaction_hash == landed, "the one that landed"
    receipt = w3.eth.get_transaction_receipt(HexStr(landed))
    assert receipt["status"] == 1 and payment.block_number == receipt["blockNumber"]
    original_hash = "0x" + bytes(original["hash"]).hex().removeprefix("0x")
    assert not _known(w3, original_hash), "replaced in the pool, never mined"
    assert w3.eth.get_transaction_count(relayer.address) == relayer_nonce + 1, "one landed"
    assert authorization_used(
        token_address, subscription.payer_address, payment.authorization_nonce, w3=w3
    )
    assert token_balance(token_address, subscription.payer_address, w3=w3) == before - 7 * 10**6
    assert _settlements(w3, token_address, subscription.payer_address) == 1


def test_replacement_fees_are_raised_by_the_minimum_and_capped(engine_settings: Any) -> None:
    relayer_module._relayers.clear()
    relayer = relayer_module.get_relayer()
    market_max_fee, market_priority = relayer._fees(fresh=True)
    cheap = SentTransaction(nonce=0, to="0x0", data="0x", gas=1, max_fee=1, priority=1)
    assert relayer.replacement_fees(cheap) == (market_max_fee, market_priority)

    expensive = SentTransaction(
        nonce=0, to="0x0", data="0x", gas=1, max_fee=100 * GWEI, priority=10 * GWEI
    )
    assert relayer.replacement_fees(expensive) == (115 * GWEI, math.ceil(11.5 * GWEI))

    at_cap = SentTransaction(
        nonce=0, to="0x0", data="0x", gas=1, max_fee=480 * GWEI, priority=10 * GWEI
    )
    assert relayer.replacement_fees(at_cap) is None, "500 gwei cap: no room for +15 %"
