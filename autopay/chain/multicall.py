"""Many calls in one transaction through Multicall3's ``aggregate3`` (the canonical contract on
real networks, contracts/AutoPayMulticall.sol locally: same ABI).

Encoding and decoding are written out by hand for the one shape we use, because eth_abi spends
longer on a 200-call batch than signing it does; tests check both against eth_abi. Receipts are
read as the node's raw JSON for the same reason (web3's formatters walk every log).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.types import RPCEndpoint

from autopay.chain.abi import AUTHORIZATION_USED_TOPIC
from autopay.chain.client import ChainUnavailable, call_rpc

AGGREGATE3_SELECTOR = keccak(text="aggregate3((address,bool,bytes)[])")[:4]
_ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
_PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)
_WORD = 32


@dataclass(frozen=True)
class Call3:
    """One call of an aggregate3 batch."""

    target: str
    call_data: bytes
    allow_failure: bool = True


@dataclass(frozen=True)
class CallResult:
    """One call's outcome in an aggregate3 simulation."""

    success: bool
    return_data: bytes

    @property
    def revert_reason(self) -> str:
        return revert_reason(self.return_data)


def _uint(value: int) -> bytes:
    return value.to_bytes(_WORD, "big")


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % _WORD)


def encode_aggregate3(calls: Sequence[Call3]) -> bytes:
    """Calldata of ``aggregate3(calls)``: the ABI encoding of ``(address,bool,bytes)[]``."""
    tuples = []
    for call in calls:
        tuples.append(
            bytes(12)
            + bytes.fromhex(call.target.removeprefix("0x"))
            + _uint(1 if call.allow_failure else 0)
            + _uint(3 * _WORD)  # the bytes start after the three head words
            + _uint(len(call.call_data))
            + _padded(call.call_data)
        )
    offsets, position = [], len(tuples) * _WORD
    for encoded in tuples:
        offsets.append(_uint(position))
        position += len(encoded)
    return b"".join([AGGREGATE3_SELECTOR, _uint(_WORD), _uint(len(tuples)), *offsets, *tuples])


def _word(data: bytes, position: int) -> int:
    if position + _WORD > len(data):
        raise ValueError("aggregate3 result is truncated")
    return int.from_bytes(data[position : position + _WORD], "big")


def decode_aggregate3(data: bytes) -> list[CallResult]:
    """The ``(bool,bytes)[]`` an aggregate3 call returns."""
    array = _word(data, 0)
    count = _word(data, array)
    base = array + _WORD
    results = []
    for index in range(count):
        start = base + _word(data, base + index * _WORD)
        success = _word(data, start) != 0
        at = start + _word(data, start + _WORD)
        length = _word(data, at)
        if at + _WORD + length > len(data):
            raise ValueError("aggregate3 result is truncated")
        results.append(CallResult(success, bytes(data[at + _WORD : at + _WORD + length])))
    return results


def revert_reason(return_data: bytes) -> str:
    """A failed call's revert payload as text that always says 'execution reverted'."""
    selector, payload = return_data[:4], return_data[4:]
    with contextlib.suppress(Exception):  # a malformed payload falls through to its hex
        if selector == _ERROR_STRING_SELECTOR:
            return f"execution reverted: {decode(['string'], payload)[0]}"
        if selector == _PANIC_SELECTOR:
            return f"execution reverted: panic({hex(decode(['uint256'], payload)[0])})"
    if return_data:
        return f"execution reverted (0x{return_data.hex()})"
    # Nothing returned: a revert without a reason, or the call ran out of gas.
    return "execution reverted without a reason (or out of gas)"


def simulate_aggregate3(
    w3: Web3, *, multicall: str, calldata: bytes, calls: int, sender: str, gas: int | None = None
) -> list[CallResult]:
    """``eth_call`` of aggregate3 (``calldata``, from ``encode_aggregate3``, of ``calls``
    calls) on the pending block: each call's success or revert reason, as the transaction
    would see them if it were mined now. ``gas`` caps the simulation as it will cap the
    transaction, so a call that would run out of gas fails here too."""
    request: dict[str, Any] = {
        "from": to_checksum_address(sender),
        "to": to_checksum_address(multicall),
        "data": "0x" + calldata.hex(),
    }
    if gas is not None:
        request["gas"] = hex(gas)
    raw = _request(w3, "eth_call", [request, "pending"])
    results = decode_aggregate3(bytes.fromhex(str(raw).removeprefix("0x")))
    if len(results) != calls:
        raise ValueError(f"aggregate3 returned {len(results)} results for {calls} calls")
    return results


def raw_receipt(w3: Web3, tx_hash: str) -> dict[str, Any] | None:
    """The node's receipt JSON for ``tx_hash`` (hex strings as sent), None while unmined."""
    receipt = _request(w3, "eth_getTransactionReceipt", [tx_hash])
    return dict(receipt) if receipt else None


def authorizations_used(logs: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], int]:
    """The EIP-3009 authorizations a receipt's raw logs show used: (token, authorizer, nonce),
    all lower-case hex, to the block number of the log."""
    used: dict[tuple[str, str, str], int] = {}
    for log in logs:
        topics = [str(topic).lower() for topic in log.get("topics") or []]
        if len(topics) != 3 or topics[0] != AUTHORIZATION_USED_TOPIC:
            continue
        key = (str(log["address"]).lower(), "0x" + topics[1][-40:], topics[2])
        used[key] = int(str(log.get("blockNumber") or "0x0"), 16)
    return used


def _request(w3: Web3, method: str, params: list[Any]) -> Any:
    """A raw JSON-RPC request: transport failures and node errors are ChainUnavailable, except
    an eth_call that reverted as a whole, which is a ValueError with the node's message."""
    response = call_rpc(w3.provider.make_request, RPCEndpoint(method), params)
    error = response.get("error")
    if error:
        message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        if "revert" in message.lower():
            raise ValueError(f"{method} reverted: {message}")
        raise ChainUnavailable(f"chain RPC error in {method}: {message}")
    return response.get("result")
