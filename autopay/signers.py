"""Who signs for the payer. One interface: a server-held wallet (custodial) or the payer's own
signature uploaded in advance (pre-signed: no key held at all)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import coincurve
from django.core.exceptions import ImproperlyConfigured
from eth_account import Account
from eth_utils import to_checksum_address

from autopay.authorizations import mismatch, stored_authorization
from autopay.rails.authorization import (
    TRANSFER_WITH_AUTHORIZATION_TYPES,
    TransferAuthorization,
    sign_digest,
)
from subscriptions.custody import KeyCustodyError, decrypt_private_key
from subscriptions.errors import (
    AuthorizationCanceled,
    AuthorizationMissing,
    ConfigurationError,
    PaymentError,
    SignerUnavailable,
)
from subscriptions.models import PayerWallet, Payment, PresignedAuthorization
from subscriptions.selectors import signed_periods_remaining


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


class PresignedSigner:
    """Holds no key: hands over the payer's own signature, uploaded in advance, and only for
    exactly the authorization the payer signed (every field, window included)."""

    def __init__(self, stored: PresignedAuthorization | None, *, payment: Payment) -> None:
        self._stored = stored
        self._payment = payment
        self.address = payment.payer_address

    def __repr__(self) -> str:
        return f"<PresignedSigner {self.address}>"

    def _missing(self, why: str) -> AuthorizationMissing:
        subscription = self._payment.subscription
        remaining = signed_periods_remaining(subscription=subscription)
        return AuthorizationMissing(
            f"{why}; {remaining} coming period(s) remain signed. Upload the payer's signature "
            f"(POST /api/subscriptions/{subscription.pk}/authorizations); nothing was charged."
        )

    def sign(self, authorization: TransferAuthorization) -> str:
        stored = self._stored
        period = self._payment.period_index
        if stored is None:
            raise self._missing(f"no pre-signed authorization for period {period}")
        if stored.canceled_at is not None:
            raise AuthorizationCanceled(
                f"the payer canceled the authorization of period {period} on chain"
            )
        if stored.valid_before <= int(time.time()) + stored.MINIMUM_REMAINING_SECONDS:
            raise self._missing(
                f"the authorization of period {period} expired (validBefore {stored.valid_before})"
            )
        difference = mismatch(stored, authorization)
        if difference is not None:
            raise self._missing(
                f"the authorization of period {period} no longer matches the subscription "
                f"({difference})"
            )
        return stored.signature


def payment_signer(payment: Payment) -> AuthorizationSigner:
    """The signer of a payment, by its subscription's mode."""
    subscription = payment.subscription
    if subscription.is_presigned:
        return PresignedSigner(stored_authorization(payment), payment=payment)
    return signer_for_payment(
        wallet_id=payment.wallet_id,
        owner_id=subscription.owner_id,
        payer_address=payment.payer_address,
    )


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
