"""The EIP-3009 authorization a payer signs, and the nonce derived from a payment. Plain data
and pure functions: used by the rails, the signers and the engine alike."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import coincurve
from eth_utils import keccak, to_checksum_address

TRANSFER_WITH_AUTHORIZATION_TYPES = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


@lru_cache(maxsize=65_536)
def checksum_address(address: str) -> str:
    """``to_checksum_address``, remembered: a batch names the same token, payers and
    recipients hundreds of times, and each checksum is a keccak."""
    return str(to_checksum_address(address))


TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak(
    text="TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
    "uint256 validBefore,bytes32 nonce)"
)


@dataclass(frozen=True)
class TransferAuthorization:
    """An EIP-3009 TransferWithAuthorization and the EIP-712 domain it is signed under."""

    token_address: str
    chain_id: int
    token_name: str
    token_version: str
    payer: str
    recipient: str
    value: int
    valid_after: int
    valid_before: int
    nonce: str  # 0x + 64 hex

    def domain(self) -> dict[str, Any]:
        return {
            "name": self.token_name,
            "version": self.token_version,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.token_address),
        }

    def message(self) -> dict[str, Any]:
        return {
            "from": to_checksum_address(self.payer),
            "to": to_checksum_address(self.recipient),
            "value": self.value,
            "validAfter": self.valid_after,
            "validBefore": self.valid_before,
            "nonce": bytes.fromhex(self.nonce.removeprefix("0x")),
        }


def derive_authorization_nonce(
    *, chain_id: int, token_address: str, payer: str, subscription_id: int, period_start: int
) -> str:
    """The EIP-3009 nonce of a billing period: deterministic, so a second settlement of the
    same period is refused by the token contract itself ("authorization is used")."""
    material = b"|".join(
        [
            b"autopay.eip3009.v1",
            str(chain_id).encode(),
            checksum_address(token_address).encode(),
            checksum_address(payer).encode(),
            str(subscription_id).encode(),
            str(period_start).encode(),
        ]
    )
    return "0x" + keccak(material).hex().removeprefix("0x")


def authorization_digest(authorization: TransferAuthorization, *, domain_separator: bytes) -> bytes:
    """The EIP-712 digest the payer signs, from the token's precomputed domain separator and
    the type hash: the same bytes eth_account's sign_typed_data hashes, without re-encoding
    the typed data (a batch hashes hundreds)."""
    struct_hash = keccak(
        b"".join(
            [
                TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
                bytes(12) + bytes.fromhex(authorization.payer.removeprefix("0x")),
                bytes(12) + bytes.fromhex(authorization.recipient.removeprefix("0x")),
                authorization.value.to_bytes(32, "big"),
                authorization.valid_after.to_bytes(32, "big"),
                authorization.valid_before.to_bytes(32, "big"),
                bytes.fromhex(authorization.nonce.removeprefix("0x")),
            ]
        )
    )
    return keccak(b"\x19\x01" + domain_separator + struct_hash)


def sign_digest(private_key: bytes | coincurve.PrivateKey, digest: bytes) -> bytes:
    """A 65-byte r‖s‖v signature of ``digest`` (v = 27 or 28; s is always low, as EIP-2 and
    the token require), by libsecp256k1 through coincurve. A ``coincurve.PrivateKey`` made
    once signs many digests without deriving its public key each time."""
    key = (
        private_key
        if isinstance(private_key, coincurve.PrivateKey)
        else (coincurve.PrivateKey(private_key))
    )
    signature = key.sign_recoverable(digest, hasher=None)
    return signature[:64] + bytes([signature[64] + 27])


def recover_signer(digest: bytes, signature: bytes) -> str | None:
    """The address that signed ``digest`` (lower-case hex), or None for a malformed one."""
    if len(signature) != 65 or signature[64] not in (27, 28):
        return None
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([signature[64] - 27]), digest, hasher=None
        )
    except Exception:
        return None
    return "0x" + keccak(public_key.format(compressed=False)[1:])[-20:].hex()
