"""The few ABI fragments the engine calls directly (the full token ABI is in contracts/)."""

from __future__ import annotations

from typing import Any

from eth_utils import keccak

ERC20_MINIMAL_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "authorizationState",
        "stateMutability": "view",
        "inputs": [
            {"name": "authorizer", "type": "address"},
            {"name": "nonce", "type": "bytes32"},
        ],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "type": "function",
        "name": "DOMAIN_SEPARATOR",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "bytes32"}],
    },
]

EIP712_DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)

AUTHORIZATION_USED_TOPIC = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()

# transferWithAuthorization(from, to, value, validAfter, validBefore, nonce, v, r, s): the
# EIP-3009 overload every USDC version has.
TRANSFER_WITH_AUTHORIZATION_SELECTOR = keccak(
    text="transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,"
    "bytes32,bytes32)"
)[:4]


def encode_transfer_with_authorization(
    *,
    payer: str,
    recipient: str,
    value: int,
    valid_after: int,
    valid_before: int,
    nonce: bytes,
    signature: bytes,
) -> bytes:
    """Calldata of ``transferWithAuthorization`` (v, r, s) for a 65-byte r‖s‖v signature;
    nine static words, written out (a batch encodes hundreds)."""
    if len(signature) != 65 or len(nonce) != 32:
        raise ValueError("a 65-byte signature and a 32-byte nonce are required")
    return b"".join(
        [
            TRANSFER_WITH_AUTHORIZATION_SELECTOR,
            bytes(12) + bytes.fromhex(payer.removeprefix("0x")),
            bytes(12) + bytes.fromhex(recipient.removeprefix("0x")),
            value.to_bytes(32, "big"),
            valid_after.to_bytes(32, "big"),
            valid_before.to_bytes(32, "big"),
            nonce,
            signature[64].to_bytes(32, "big"),
            signature[:32],
            signature[32:64],
        ]
    )
