"""Who signs for the payer. One interface, so that pre-signed authorizations uploaded by a payer
(no key held) can be added beside server-held wallets without touching the worker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import coincurve
from django.core.exceptions import ImproperlyConfigured
from eth_account import Account
from eth_utils import to_checksum_address

from autopay.rails.authorization import (
    TRANSFER_WITH_AUTHORIZATION_TYPES,
    TransferAuthorization,
    sign_digest,
)
from subscriptions.custody import KeyCustodyError, decrypt_private_key
from subscriptions.errors import ConfigurationError, PaymentError, SignerUnavailable
from subscriptions.models import PayerWallet


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


@dataclass(frozen=True)
class DigestToSign:
    """One payment's EIP-712 digest, and whose key may sign it."""

    wallet_id: int | None
    owner_id: int
    payer_address: str
    digest: bytes


def sign_digests(requests: Sequence[DigestToSign]) -> list[bytes | PaymentError]:
    """The payers' 65-byte signatures of many digests (a batch), or each one's error.

    The rule of ``signer_for_payment`` for each: the payment's wallet signs if, and only if,
    it belongs to the subscription's owner and holds the payer's key; every wallet is loaded
    in one query and each key decrypted once, only for this call.
    """
    wallet_ids = {request.wallet_id for request in requests if request.wallet_id is not None}
    wallets = {
        wallet.pk: wallet
        for wallet in PayerWallet.objects.filter(pk__in=wallet_ids).only(
            "pk", "owner_id", "address", "encrypted_private_key"
        )
    }
    keys: dict[int, coincurve.PrivateKey | PaymentError] = {}
    signatures: list[bytes | PaymentError] = []
    for request in requests:
        wallet = wallets.get(request.wallet_id) if request.wallet_id is not None else None
        if wallet is None or wallet.owner_id != request.owner_id:
            signatures.append(
                SignerUnavailable(
                    "no wallet of the subscription's owner is attached to this payment; "
                    "nothing was signed"
                )
            )
            continue
        if wallet.address.lower() != request.payer_address.lower():
            signatures.append(
                SignerUnavailable("the attached wallet does not hold the payer's key")
            )
            continue
        key = keys.get(wallet.pk)
        if key is None:
            try:
                key = coincurve.PrivateKey(decrypt_private_key(wallet.encrypted_private_key))
            except (ImproperlyConfigured, KeyCustodyError) as exc:
                # The operator's key setup, not the customer's wallet: the job waits for a fix.
                key = ConfigurationError(
                    f"wallet key cannot be decrypted: {exc} (AUTOPAY_KEY_ENCRYPTION_KEYS)"
                )
            keys[wallet.pk] = key
        signatures.append(
            key if isinstance(key, PaymentError) else sign_digest(key, request.digest)
        )
    keys.clear()
    return signatures
