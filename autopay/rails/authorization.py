"""The EIP-3009 authorization a payer signs, and the nonce derived from a payment. Plain data
and pure functions: used by the rails, the signers and the engine alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
            to_checksum_address(token_address).encode(),
            to_checksum_address(payer).encode(),
            str(subscription_id).encode(),
            str(period_start).encode(),
        ]
    )
    return "0x" + keccak(material).hex().removeprefix("0x")
