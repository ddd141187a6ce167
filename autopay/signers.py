"""Who signs for the payer. One interface, so that pre-signed authorizations uploaded by a payer
(no key held) can be added beside server-held wallets without touching the worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from autopay.custody import KeyCustodyError, decrypt_private_key
from autopay.errors import ConfigurationError, SignerUnavailable
from autopay.models import PayerWallet

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


class AuthorizationSigner(Protocol):
    """Produces the payer's 65-byte signature over a TransferAuthorization."""

    address: str

    def sign(self, authorization: TransferAuthorization) -> str: ...


class ServerWalletSigner:
    """Signs with a PayerWallet key held encrypted by the server; decrypted only to sign."""

    def __init__(self, wallet: PayerWallet) -> None:
        self._wallet = wallet
        self.address = wallet.address

    def __repr__(self) -> str:
        return f"<ServerWalletSigner {self.address}>"

    def sign(self, authorization: TransferAuthorization) -> str:
        if to_checksum_address(authorization.payer) != to_checksum_address(self.address):
            raise SignerUnavailable("authorization payer does not match the wallet")
        try:
            key = decrypt_private_key(self._wallet.encrypted_private_key)
        except (ImproperlyConfigured, KeyCustodyError) as exc:
            # The operator's key setup, not the customer's wallet: the job waits for a fix.
            raise ConfigurationError(
                f"wallet key cannot be decrypted: {exc} (AUTOPAY_KEY_ENCRYPTION_KEYS)"
            ) from exc
        signed = Account.sign_typed_data(
            key,
            domain_data=authorization.domain(),
            message_types=TRANSFER_WITH_AUTHORIZATION_TYPES,
            message_data=authorization.message(),
        )
        del key
        return "0x" + bytes(signed.signature).hex().removeprefix("0x")


def signer_for_payment(
    *, wallet_id: int | None, owner_id: int, payer_address: str
) -> AuthorizationSigner:
    """The signer of a payment: the wallet ``wallet_id`` if, and only if, it belongs to
    ``owner_id`` (the subscription's owner) and holds the key of ``payer_address``.

    Keys are never looked up by address alone: an address is public, so a lookup by address
    would let anyone who names another user's wallet spend from it.
    """
    wallet = (
        PayerWallet.objects.filter(pk=wallet_id, owner_id=owner_id).first()
        if wallet_id is not None
        else None
    )
    if wallet is None:
        raise SignerUnavailable(
            "no wallet of the subscription's owner is attached to this payment; nothing was signed"
        )
    if to_checksum_address(wallet.address) != to_checksum_address(payer_address):
        raise SignerUnavailable("the attached wallet does not hold the payer's key")
    return ServerWalletSigner(wallet)


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
