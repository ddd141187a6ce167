"""The batch rail's building blocks: aggregate3 encoding (checked against eth_abi), the EIP-712
digest (checked against eth_account), the contract on a live anvil (a failing call does not
revert the others, its reason comes back), the gas bound per call, and receipt parsing."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from eth_abi import decode, encode
from eth_account import Account
from web3 import Web3

from autopay.chain.abi import encode_transfer_with_authorization
from autopay.chain.client import expected_domain_separator
from autopay.chain.multicall import (
    Call3,
    authorizations_used,
    decode_aggregate3,
    encode_aggregate3,
    raw_receipt,
    revert_reason,
    simulate_aggregate3,
)
from autopay.devtools.anvil import ANVIL_DEV_KEYS
from autopay.devtools.contracts import load_artifact, mint
from autopay.rails.authorization import (
    TRANSFER_WITH_AUTHORIZATION_TYPES,
    TransferAuthorization,
    authorization_digest,
    recover_signer,
    sign_digest,
)
from autopay.rails.x402_batch import GAS_BATCH_OVERHEAD, GAS_PER_CALL


def test_aggregate3_calldata_is_the_abi_encoding() -> None:
    calls = [
        Call3(target=Account.create().address, call_data=os.urandom(length), allow_failure=flag)
        for length, flag in ((0, True), (4, False), (292, True), (33, True))
    ]
    expected = Web3.keccak(text="aggregate3((address,bool,bytes)[])")[:4] + encode(
        ["(address,bool,bytes)[]"],
        [[(call.target, call.allow_failure, call.call_data) for call in calls]],
    )

    assert encode_aggregate3(calls) == expected


def test_aggregate3_results_decode_as_eth_abi_does() -> None:
    results = [(True, b""), (False, os.urandom(68)), (True, os.urandom(32)), (False, b"")]
    data = encode(["(bool,bytes)[]"], [results])

    decoded = decode_aggregate3(data)

    assert [(result.success, result.return_data) for result in decoded] == results
    assert decode(["(bool,bytes)[]"], data)[0] == tuple(results)
    with pytest.raises(ValueError):
        decode_aggregate3(data[:-40])


def test_revert_reasons_are_readable() -> None:
    error = bytes.fromhex("08c379a0") + encode(["string"], ["authorization is used or canceled"])
    panic = bytes.fromhex("4e487b71") + encode(["uint256"], [0x11])

    assert revert_reason(error) == "execution reverted: authorization is used or canceled"
    assert revert_reason(panic) == "execution reverted: panic(0x11)"
    assert "without a reason" in revert_reason(b"")
    assert revert_reason(b"\x01\x02") == "execution reverted (0x0102)"


def test_digest_and_signature_match_eth_account() -> None:
    payer = Account.create()
    authorization = TransferAuthorization(
        token_address=Account.create().address,
        chain_id=8453,
        token_name="USD Coin",
        token_version="2",
        payer=payer.address,
        recipient=Account.create().address,
        value=9_990_000,
        valid_after=1_700_000_000,
        valid_before=1_700_003_600,
        nonce="0x" + os.urandom(32).hex(),
    )
    domain = expected_domain_separator(
        name="USD Coin", version="2", chain_id=8453, token_address=authorization.token_address
    )
    reference = Account.sign_typed_data(
        payer.key,
        domain_data=authorization.domain(),
        message_types=TRANSFER_WITH_AUTHORIZATION_TYPES,
        message_data=authorization.message(),
    )

    digest = authorization_digest(authorization, domain_separator=domain)
    signature = sign_digest(bytes(payer.key), digest)

    assert digest == reference.message_hash
    assert signature == bytes(reference.signature)
    assert recover_signer(digest, signature) == payer.address.lower()
    assert recover_signer(digest, signature[:64] + b"\x05") is None


def _signed_call(
    token: str, payer: Any, recipient: str, value: int, *, nonce: bytes | None = None
) -> Call3:
    now = int(time.time())
    authorization = TransferAuthorization(
        token_address=token,
        chain_id=31337,
        token_name="USD Coin",
        token_version="2",
        payer=payer.address,
        recipient=recipient,
        value=value,
        valid_after=now - 600,
        valid_before=now + 600,
        nonce="0x" + (nonce or os.urandom(32)).hex(),
    )
    domain = expected_domain_separator(
        name="USD Coin", version="2", chain_id=31337, token_address=token
    )
    signature = sign_digest(
        bytes(payer.key), authorization_digest(authorization, domain_separator=domain)
    )
    return Call3(
        target=token,
        call_data=encode_transfer_with_authorization(
            payer=payer.address,
            recipient=recipient,
            value=value,
            valid_after=authorization.valid_after,
            valid_before=authorization.valid_before,
            nonce=bytes.fromhex(authorization.nonce[2:]),
            signature=signature,
        ),
    )


@pytest.mark.chain
def test_one_failing_call_does_not_revert_the_batch_and_says_why(
    w3: Web3, token_address: str, multicall_address: str, deployer: Any
) -> None:
    rich, poor = Account.create(), Account.create()
    mint(w3, token_address, deployer.key, rich.address, 10 * 10**6)
    nonce = os.urandom(32)
    calls = [
        _signed_call(token_address, rich, Account.create().address, 10**6, nonce=nonce),
        _signed_call(token_address, poor, Account.create().address, 10**6),
        _signed_call(token_address, rich, Account.create().address, 10**6, nonce=nonce),
        _signed_call(token_address, rich, Account.create().address, 10**6),
    ]
    sender = Account.from_key(ANVIL_DEV_KEYS[1]).address

    results = simulate_aggregate3(
        w3,
        multicall=multicall_address,
        calldata=encode_aggregate3(calls),
        calls=len(calls),
        sender=sender,
        gas=None,
    )

    assert [result.success for result in results] == [True, False, False, True]
    assert results[1].revert_reason == "execution reverted: transfer amount exceeds balance"
    assert results[2].revert_reason == "execution reverted: authorization is used or canceled"
    # The contract is Multicall3's aggregate3: same ABI.
    abi = load_artifact("AutoPayMulticall")["abi"]
    assert [item["name"] for item in abi if item["type"] == "function"] == ["aggregate3"]


@pytest.mark.chain
def _coldest_batch(
    w3: Web3, token: str, multicall: str, deployer: Any, *, gas_per_call: int
) -> tuple[int, int]:
    """20 calls, every payer and recipient new (cold slots, empty recipient balances, payers
    emptied: their refund comes only at the end), sent with a gas limit computed from
    ``gas_per_call``; returns how many settled and the gas used."""
    payers = [Account.create() for _ in range(20)]
    for payer in payers:
        mint(w3, token, deployer.key, payer.address, 10**6)
    calls = [_signed_call(token, payer, Account.create().address, 10**6) for payer in payers]
    relayer = Account.from_key(ANVIL_DEV_KEYS[1])
    data = encode_aggregate3(calls)
    zeros = data.count(0)
    limit = GAS_BATCH_OVERHEAD + 4 * zeros + 16 * (len(data) - zeros) + 20 * gas_per_call
    tx = relayer.sign_transaction(
        {
            "type": 2,
            "chainId": 31337,
            "to": multicall,
            "data": data,
            "value": 0,
            "gas": limit,
            "maxFeePerGas": 100 * 10**9,
            "maxPriorityFeePerGas": 10**9,
            "nonce": w3.eth.get_transaction_count(relayer.address, "pending"),
        }
    )
    tx_hash = "0x" + w3.eth.send_raw_transaction(tx.raw_transaction).hex().removeprefix("0x")
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)  # type: ignore[arg-type]
    logs = (raw_receipt(w3, tx_hash) or {}).get("logs") or []
    return len(authorizations_used(logs)), int(receipt["gasUsed"])


@pytest.mark.chain
def test_gas_bound_per_call_covers_the_coldest_transfer_and_no_more(
    w3: Web3, token_address: str, multicall_address: str, deployer: Any
) -> None:
    settled, _ = _coldest_batch(
        w3, token_address, multicall_address, deployer, gas_per_call=GAS_PER_CALL
    )
    assert settled == 20, "no call ran out of gas"

    # 6k less per call is not enough: the bound is tight (a loose one would fit fewer
    # batches in a block).
    settled, _ = _coldest_batch(
        w3, token_address, multicall_address, deployer, gas_per_call=GAS_PER_CALL - 6_000
    )
    assert settled < 20
