"""AutoPayUSD against a live anvil: EIP-3009, EIP-2612 and ERC-20 behaviour and revert strings.

Signatures are made with eth_account's ``sign_typed_data`` (full EIP-712 message), the same way
the payment engine signs. Revert strings are read from web3's ``ContractLogicError`` raised by
``eth_call`` / ``eth_estimateGas``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.datastructures import SignedMessage
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import RPCEndpoint

from autopay.devtools.anvil import ANVIL_DEV_KEYS
from autopay.devtools.contracts import mint, sign_and_send

pytestmark = [pytest.mark.chain, pytest.mark.usefixtures("chain_snapshot")]

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
USDC = 10**6

EIP712_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
AUTHORIZATION_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
TYPES: dict[str, list[dict[str, str]]] = {
    "TransferWithAuthorization": AUTHORIZATION_FIELDS,
    "ReceiveWithAuthorization": AUTHORIZATION_FIELDS,
    "CancelAuthorization": [
        {"name": "authorizer", "type": "address"},
        {"name": "nonce", "type": "bytes32"},
    ],
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ],
}


# --------------------------------------------------------------------------- helpers


def typed_data(w3: Web3, token: Contract, primary: str, message: dict[str, Any]) -> dict[str, Any]:
    return {
        "types": {"EIP712Domain": EIP712_DOMAIN_FIELDS, primary: TYPES[primary]},
        "primaryType": primary,
        "domain": {
            "name": "USD Coin",
            "version": "2",
            "chainId": w3.eth.chain_id,
            "verifyingContract": token.address,
        },
        "message": message,
    }


def sign(
    w3: Web3, token: Contract, signer: LocalAccount, primary: str, message: dict[str, Any]
) -> SignedMessage:
    return Account.sign_typed_data(signer.key, full_message=typed_data(w3, token, primary, message))


def vrs(sig: SignedMessage) -> tuple[int, bytes, bytes]:
    return sig.v, sig.r.to_bytes(32, "big"), sig.s.to_bytes(32, "big")


def now(w3: Web3) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def authorization(
    w3: Web3,
    payer: LocalAccount,
    to: str,
    value: int,
    *,
    valid_after: int | None = None,
    valid_before: int | None = None,
) -> dict[str, Any]:
    t = now(w3)
    return {
        "from": payer.address,
        "to": to,
        "value": value,
        "validAfter": t - 60 if valid_after is None else valid_after,
        "validBefore": t + 3600 if valid_before is None else valid_before,
        "nonce": secrets.token_bytes(32),
    }


def auth_args(auth: dict[str, Any]) -> list[Any]:
    return [
        auth["from"],
        auth["to"],
        auth["value"],
        auth["validAfter"],
        auth["validBefore"],
        auth["nonce"],
    ]


def submit(w3: Web3, sender: LocalAccount, fn: Any, **tx: Any) -> Any:
    """Sign and send ``fn`` from ``sender``; returns the receipt (estimate_gas raises reverts)."""
    return sign_and_send(w3, sender.key, fn.build_transaction({"from": sender.address, **tx}))


def revert_reason_of(w3: Web3, tx_hash: bytes) -> str:
    """The Error(string) reason of a mined, reverted transaction (via debug_traceTransaction)."""
    trace = w3.provider.make_request(
        RPCEndpoint("debug_traceTransaction"), [Web3.to_hex(tx_hash), {}]
    )
    data = bytes.fromhex(trace["result"]["returnValue"].removeprefix("0x"))
    assert data[:4] == keccak(text="Error(string)")[:4], data.hex()
    return str(abi_decode(["string"], data[4:])[0])


@pytest.fixture
def payer(funded_account: Callable[..., LocalAccount]) -> LocalAccount:
    """A fresh account holding 100 tokens and no ETH."""
    return funded_account(100 * USDC)


@pytest.fixture
def payee() -> LocalAccount:
    return Account.create()


# --------------------------------------------------------------------------- metadata


def test_metadata_domain_and_typehashes(w3: Web3, token: Contract, deployer: LocalAccount) -> None:
    f = token.functions
    assert f.name().call() == "USD Coin"
    assert f.symbol().call() == "USDC"
    assert f.decimals().call() == 6
    assert f.version().call() == "2"
    assert f.owner().call() == deployer.address
    assert f.isMinter(deployer.address).call() is True

    fields, name, version, chain_id, contract, salt, extensions = f.eip712Domain().call()
    assert (fields, name, version, chain_id, contract) == (
        b"\x0f",
        "USD Coin",
        "2",
        w3.eth.chain_id,
        token.address,
    )
    assert salt == b"\x00" * 32 and extensions == []

    signable = encode_typed_data(
        full_message=typed_data(
            w3, token, "CancelAuthorization", {"authorizer": token.address, "nonce": b"\x00" * 32}
        )
    )
    assert f.DOMAIN_SEPARATOR().call() == signable.header

    for constant, type_string in [
        (
            "TRANSFER_WITH_AUTHORIZATION_TYPEHASH",
            "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
            "uint256 validBefore,bytes32 nonce)",
        ),
        (
            "RECEIVE_WITH_AUTHORIZATION_TYPEHASH",
            "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
            "uint256 validBefore,bytes32 nonce)",
        ),
        ("CANCEL_AUTHORIZATION_TYPEHASH", "CancelAuthorization(address authorizer,bytes32 nonce)"),
        (
            "PERMIT_TYPEHASH",
            "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)",
        ),
    ]:
        assert getattr(f, constant)().call() == keccak(text=type_string), constant


# --------------------------------------------------------------------------- EIP-3009 transfer


@pytest.mark.parametrize("overload", ["vrs", "bytes"])
def test_transfer_with_authorization_moves_exact_amount(
    w3: Web3,
    token: Contract,
    payer: LocalAccount,
    payee: LocalAccount,
    relayer: LocalAccount,
    overload: str,
) -> None:
    value = 12_345_678  # 12.345678 tokens
    auth = authorization(w3, payer, payee.address, value)
    sig = sign(w3, token, payer, "TransferWithAuthorization", auth)
    args = [*auth_args(auth), *vrs(sig)] if overload == "vrs" else [*auth_args(auth), sig.signature]
    supply = token.functions.totalSupply().call()
    assert token.functions.authorizationState(payer.address, auth["nonce"]).call() is False

    receipt = submit(w3, relayer, token.functions.transferWithAuthorization(*args))

    assert token.functions.balanceOf(payer.address).call() == 100 * USDC - value
    assert token.functions.balanceOf(payee.address).call() == value
    assert token.functions.totalSupply().call() == supply
    assert token.functions.authorizationState(payer.address, auth["nonce"]).call() is True
    assert w3.eth.get_balance(payer.address) == 0  # gasless for the payer

    used = token.events.AuthorizationUsed().process_receipt(receipt, errors=DISCARD)
    assert [(e.args.authorizer, e.args.nonce) for e in used] == [(payer.address, auth["nonce"])]
    transfers = token.events.Transfer().process_receipt(receipt, errors=DISCARD)
    assert [(e.args["from"], e.args.to, e.args.value) for e in transfers] == [
        (payer.address, payee.address, value)
    ]


def test_replay_is_refused(
    w3: Web3, token: Contract, payer: LocalAccount, payee: LocalAccount, relayer: LocalAccount
) -> None:
    auth = authorization(w3, payer, payee.address, 5 * USDC)
    sig = sign(w3, token, payer, "TransferWithAuthorization", auth)
    submit(w3, relayer, token.functions.transferWithAuthorization(*auth_args(auth), *vrs(sig)))
    for args in ([*auth_args(auth), *vrs(sig)], [*auth_args(auth), sig.signature]):
        with pytest.raises(ContractLogicError, match="authorization is used or canceled"):
            token.functions.transferWithAuthorization(*args).call({"from": relayer.address})
        with pytest.raises(ContractLogicError, match="authorization is used or canceled"):
            token.functions.transferWithAuthorization(*args).estimate_gas({"from": relayer.address})
    assert token.functions.balanceOf(payee.address).call() == 5 * USDC


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ({"valid_before_offset": -10}, "authorization is expired"),
        ({"valid_after_offset": 3600}, "authorization is not yet valid"),
    ],
)
def test_window_refused(
    w3: Web3,
    token: Contract,
    payer: LocalAccount,
    payee: LocalAccount,
    relayer: LocalAccount,
    window: dict[str, int],
    reason: str,
) -> None:
    t = now(w3)
    auth = authorization(
        w3,
        payer,
        payee.address,
        USDC,
        valid_after=t + window.get("valid_after_offset", -60),
        valid_before=t + window.get("valid_before_offset", 7200),
    )
    sig = sign(w3, token, payer, "TransferWithAuthorization", auth)
    with pytest.raises(ContractLogicError, match=reason):
        token.functions.transferWithAuthorization(*auth_args(auth), *vrs(sig)).call(
            {"from": relayer.address}
        )


@pytest.mark.parametrize(
    ("block_offset", "reason"),
    [
        (0, "authorization is not yet valid"),  # block.timestamp == validAfter
        (1, None),  # validAfter < block.timestamp < validBefore
        (99, None),
        (100, "authorization is expired"),  # block.timestamp == validBefore
    ],
)
def test_window_bounds_are_strict(
    w3: Web3,
    token: Contract,
    payer: LocalAccount,
    payee: LocalAccount,
    relayer: LocalAccount,
    block_offset: int,
    reason: str | None,
) -> None:
    start = now(w3) + 1000
    auth = authorization(
        w3, payer, payee.address, USDC, valid_after=start, valid_before=start + 100
    )
    sig = sign(w3, token, payer, "TransferWithAuthorization", auth)
    fn = token.functions.transferWithAuthorization(*auth_args(auth), *vrs(sig))
    tx = fn.build_transaction({"from": relayer.address, "gas": 300_000})
    w3.provider.make_request(RPCEndpoint("evm_setNextBlockTimestamp"), [start + block_offset])
    receipt = sign_and_send(w3, relayer.key, tx, require_success=False)
    assert w3.eth.get_block(receipt["blockNumber"])["timestamp"] == start + block_offset
    if reason is None:
        assert receipt["status"] == 1
        assert token.functions.balanceOf(payee.address).call() == USDC
    else:
        assert receipt["status"] == 0
        assert revert_reason_of(w3, receipt["transactionHash"]) == reason
        assert token.functions.authorizationState(payer.address, auth["nonce"]).call() is False


def test_invalid_signatures_refused(
    w3: Web3, token: Contract, payer: LocalAccount, payee: LocalAccount, relayer: LocalAccount
) -> None:
    auth = authorization(w3, payer, payee.address, USDC)
    good = sign(w3, token, payer, "TransferWithAuthorization", auth)
    v, r, s = vrs(good)
    intruder = Account.create()
    wrong_signer = sign(w3, token, intruder, "TransferWithAuthorization", auth)
    tampered = {**auth, "value": 2 * USDC}
    high_s = (SECP256K1_N - good.s).to_bytes(32, "big")
    flipped_v = 55 - v  # 27 <-> 28: the malleable twin of a valid signature
    wrong_domain = Account.sign_typed_data(
        payer.key,
        full_message={
            **typed_data(w3, token, "TransferWithAuthorization", auth),
            "domain": {
                "name": "USD Coin",
                "version": "1",
                "chainId": w3.eth.chain_id,
                "verifyingContract": token.address,
            },
        },
    )
    as_receive = sign(w3, token, payer, "ReceiveWithAuthorization", auth)

    cases: list[list[Any]] = [
        [*auth_args(auth), *vrs(wrong_signer)],
        [*auth_args(tampered), v, r, s],
        [*auth_args(auth), flipped_v, r, high_s],
        [*auth_args(auth), v + 2, r, s],
        [*auth_args(auth), 0, r, s],
        [*auth_args(auth), *vrs(wrong_domain)],
        [*auth_args(auth), *vrs(as_receive)],  # wrong typehash
        [*auth_args(auth), wrong_signer.signature],
        [*auth_args(auth), r + high_s + bytes([flipped_v])],
        [*auth_args(auth), good.signature[:64]],  # compact/short signatures are not accepted
        [*auth_args(auth), good.signature + b"\x00"],
        [*auth_args(auth), b""],
    ]
    for args in cases:
        with pytest.raises(ContractLogicError, match="invalid signature"):
            token.functions.transferWithAuthorization(*args).call({"from": relayer.address})
    # The genuine signature still works afterwards.
    token.functions.transferWithAuthorization(*auth_args(auth), v, r, s).call(
        {"from": relayer.address}
    )


def test_insufficient_balance_refused(
    w3: Web3, token: Contract, payer: LocalAccount, payee: LocalAccount, relayer: LocalAccount
) -> None:
    auth = authorization(w3, payer, payee.address, 100 * USDC + 1)
    sig = sign(w3, token, payer, "TransferWithAuthorization", auth)
    with pytest.raises(ContractLogicError, match="transfer amount exceeds balance"):
        token.functions.transferWithAuthorization(*auth_args(auth), sig.signature).call(
            {"from": relayer.address}
        )
    with pytest.raises(ContractLogicError, match="transfer amount exceeds balance"):
        token.functions.transfer(payee.address, 1).call({"from": relayer.address})
    # Exactly the whole balance is fine.
    exact = authorization(w3, payer, payee.address, 100 * USDC)
    sig = sign(w3, token, payer, "TransferWithAuthorization", exact)
    submit(w3, relayer, token.functions.transferWithAuthorization(*auth_args(exact), sig.signature))
    assert token.functions.balanceOf(payer.address).call() == 0


# --------------------------------------------------------------------------- cancel / receive


@pytest.mark.parametrize("overload", ["vrs", "bytes"])
def test_cancel_authorization(
    w3: Web3,
    token: Contract,
    payer: LocalAccount,
    payee: LocalAccount,
    relayer: LocalAccount,
    overload: str,
) -> None:
    auth = authorization(w3, payer, payee.address, USDC)
    transfer_sig = sign(w3, token, payer, "TransferWithAuthorization", auth)
    cancel = {"authorizer": payer.address, "nonce": auth["nonce"]}
    cancel_sig = sign(w3, token, payer, "CancelAuthorization", cancel)
    sig_args = vrs(cancel_sig) if overload == "vrs" else (cancel_sig.signature,)

    intruder_sig = sign(w3, token, Account.create(), "CancelAuthorization", cancel)
    with pytest.raises(ContractLogicError, match="invalid signature"):
        token.functions.cancelAuthorization(
            payer.address, auth["nonce"], intruder_sig.signature
        ).call({"from": relayer.address})

    receipt = submit(
        w3, relayer, token.functions.cancelAuthorization(payer.address, auth["nonce"], *sig_args)
    )
    events = token.events.AuthorizationCanceled().process_receipt(receipt, errors=DISCARD)
    assert [(e.args.authorizer, e.args.nonce) for e in events] == [(payer.address, auth["nonce"])]
    assert token.functions.authorizationState(payer.address, auth["nonce"]).call() is True

    with pytest.raises(ContractLogicError, match="authorization is used or canceled"):
        token.functions.transferWithAuthorization(*auth_args(auth), *vrs(transfer_sig)).call(
            {"from": relayer.address}
        )
    with pytest.raises(ContractLogicError, match="authorization is used or canceled"):
        token.functions.cancelAuthorization(payer.address, auth["nonce"], *sig_args).call(
            {"from": relayer.address}
        )
    assert token.functions.balanceOf(payer.address).call() == 100 * USDC


@pytest.mark.parametrize("overload", ["vrs", "bytes"])
def test_receive_with_authorization(
    w3: Web3, token: Contract, payer: LocalAccount, relayer: LocalAccount, overload: str
) -> None:
    payee = Account.from_key(ANVIL_DEV_KEYS[2])  # has ETH to submit its own receive call
    before = token.functions.balanceOf(payee.address).call()
    auth = authorization(w3, payer, payee.address, 7 * USDC)
    sig = sign(w3, token, payer, "ReceiveWithAuthorization", auth)
    args = [*auth_args(auth), *vrs(sig)] if overload == "vrs" else [*auth_args(auth), sig.signature]

    with pytest.raises(ContractLogicError, match="caller must be the payee"):
        token.functions.receiveWithAuthorization(*args).call({"from": relayer.address})
    # A TransferWithAuthorization signature is not a ReceiveWithAuthorization one.
    wrong_type = sign(w3, token, payer, "TransferWithAuthorization", auth)
    with pytest.raises(ContractLogicError, match="invalid signature"):
        token.functions.receiveWithAuthorization(*auth_args(auth), wrong_type.signature).call(
            {"from": payee.address}
        )

    receipt = submit(w3, payee, token.functions.receiveWithAuthorization(*args))
    assert token.functions.balanceOf(payee.address).call() == before + 7 * USDC
    assert (
        token.events.AuthorizationUsed().process_receipt(receipt, errors=DISCARD)[0].args.nonce
        == auth["nonce"]
    )
    with pytest.raises(ContractLogicError, match="authorization is used or canceled"):
        token.functions.receiveWithAuthorization(*args).call({"from": payee.address})


# --------------------------------------------------------------------------- EIP-2612


def test_permit_then_transfer_from(
    w3: Web3, token: Contract, payer: LocalAccount, payee: LocalAccount, relayer: LocalAccount
) -> None:
    assert token.functions.nonces(payer.address).call() == 0
    message = {
        "owner": payer.address,
        "spender": relayer.address,
        "value": 30 * USDC,
        "nonce": 0,
        "deadline": now(w3) + 3600,
    }
    sig = sign(w3, token, payer, "Permit", message)
    permit_args = [payer.address, relayer.address, 30 * USDC, message["deadline"], *vrs(sig)]
    receipt = submit(w3, relayer, token.functions.permit(*permit_args))
    approvals = token.events.Approval().process_receipt(receipt, errors=DISCARD)
    assert [(e.args.owner, e.args.spender, e.args.value) for e in approvals] == [
        (payer.address, relayer.address, 30 * USDC)
    ]
    assert token.functions.nonces(payer.address).call() == 1
    assert token.functions.allowance(payer.address, relayer.address).call() == 30 * USDC

    with pytest.raises(ContractLogicError, match="invalid signature"):  # nonce moved on
        token.functions.permit(*permit_args).call({"from": relayer.address})
    with pytest.raises(ContractLogicError, match="transfer amount exceeds allowance"):
        token.functions.transferFrom(payer.address, payee.address, 30 * USDC + 1).call(
            {"from": relayer.address}
        )

    submit(w3, relayer, token.functions.transferFrom(payer.address, payee.address, 20 * USDC))
    assert token.functions.balanceOf(payee.address).call() == 20 * USDC
    assert token.functions.allowance(payer.address, relayer.address).call() == 10 * USDC


def test_permit_expired_and_bytes_overload(
    w3: Web3, token: Contract, payer: LocalAccount, relayer: LocalAccount
) -> None:
    base = {"owner": payer.address, "spender": relayer.address, "value": USDC, "nonce": 0}
    expired = {**base, "deadline": now(w3) - 1}
    sig = sign(w3, token, payer, "Permit", expired)
    with pytest.raises(ContractLogicError, match="permit is expired"):
        token.functions.permit(
            payer.address, relayer.address, USDC, expired["deadline"], *vrs(sig)
        ).call({"from": relayer.address})

    valid = {**base, "deadline": now(w3) + 600}
    sig = sign(w3, token, payer, "Permit", valid)
    submit(
        w3,
        relayer,
        token.functions.permit(
            payer.address, relayer.address, USDC, valid["deadline"], sig.signature
        ),
    )
    assert token.functions.allowance(payer.address, relayer.address).call() == USDC


# --------------------------------------------------------------------------- roles


def test_mint_and_minter_roles(
    w3: Web3, token: Contract, token_address: str, deployer: LocalAccount, relayer: LocalAccount
) -> None:
    holder = Account.create()
    with pytest.raises(ContractLogicError, match="caller is not a minter"):
        token.functions.mint(holder.address, USDC).call({"from": relayer.address})
    with pytest.raises(ContractLogicError, match="caller is not the owner"):
        token.functions.setMinter(relayer.address, True).call({"from": relayer.address})

    submit(w3, deployer, token.functions.setMinter(relayer.address, True))
    tx_hash = mint(w3, token_address, relayer.key, holder.address, 3 * USDC)
    assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    assert token.functions.balanceOf(holder.address).call() == 3 * USDC

    submit(w3, deployer, token.functions.setMinter(relayer.address, False))
    with pytest.raises(ContractLogicError, match="caller is not a minter"):
        token.functions.mint(holder.address, USDC).call({"from": relayer.address})
