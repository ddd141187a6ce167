"""Pre-signed (non-custodial) subscriptions: what the payer is asked to sign, checking what
they signed, and finding the stored authorization of a payment.

The payer signs, in advance, the EIP-3009 TransferWithAuthorization of each coming period:
the period's amount to the subscription's recipient, with the period's derived nonce (the
same derivation the engine uses for custodial payments, so the token contract accepts at most
one settlement per period whoever signed it) and a window around the period: valid from a
little before its start (clock skew) until the next period starts. Nothing is signed by the
server; the engine only submits what was uploaded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import is_hex_address, to_checksum_address

from autopay.rails.authorization import (
    TRANSFER_WITH_AUTHORIZATION_TYPES,
    TransferAuthorization,
    derive_authorization_nonce,
)
from autopay.rails.base import PaymentIntent
from autopay.rails.x402_exact import VALID_AFTER_SKEW_SECONDS
from core.errors import ServiceError
from core.networks import network_config
from subscriptions import periods
from subscriptions.models import Payment, PresignedAuthorization, Subscription
from subscriptions.services import SETTLED_STATUSES, subscription_lock

# An authorization whose window ends sooner than this is not worth submitting (nor storing).
MINIMUM_REMAINING_SECONDS = PresignedAuthorization.MINIMUM_REMAINING_SECONDS
# How many periods one request may ask for or upload.
MAX_PERIODS_PER_REQUEST = 120

EIP712_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


class AuthorizationRejected(ServiceError):
    """An uploaded authorization is not what this subscription asks for (HTTP 400); nothing of
    the upload is stored."""

    code = "authorization_rejected"


class NotPresigned(ServiceError):
    """The subscription is custodial: a server-held wallet signs its payments (HTTP 400)."""

    code = "not_presigned"


class NotOwner(ServiceError):
    """Only the subscription's owner may upload its authorizations (HTTP 403)."""

    status_code = 403
    code = "not_owner"


# --- the one derivation ---------------------------------------------------------------------


def chain_id_of(network: str) -> int:
    """The EVM chain id of a CAIP-2 ``eip155:<id>`` network."""
    return int(network.split(":", 1)[1])


def period_nonce(
    *, network: str, subscription_id: int, payer: str, token_address: str, period_start: datetime
) -> str:
    """The EIP-3009 nonce of a billing period on its network's chain (custodial, pre-signed
    and x402 HTTP alike)."""
    return derive_authorization_nonce(
        chain_id=chain_id_of(network),
        token_address=token_address,
        payer=payer,
        subscription_id=subscription_id,
        period_start=int(period_start.timestamp()),
    )


def requested_authorization(*, subscription: Subscription, index: int) -> TransferAuthorization:
    """The authorization this subscription asks its payer to sign for period ``index``."""
    start = subscription.period_start(index)
    end = subscription.period_start(index + 1)
    network = network_config(subscription.network)
    return TransferAuthorization(
        token_address=to_checksum_address(subscription.token_address),
        chain_id=chain_id_of(subscription.network),
        token_name=network.token_name if network else settings.TOKEN_EIP712_NAME,
        token_version=network.token_version if network else settings.TOKEN_EIP712_VERSION,
        payer=to_checksum_address(subscription.payer_address),
        recipient=to_checksum_address(subscription.recipient_address),
        value=subscription.amount_atomic,
        valid_after=int(start.timestamp()) - VALID_AFTER_SKEW_SECONDS,
        valid_before=int(end.timestamp()),
        nonce=period_nonce(
            network=subscription.network,
            subscription_id=subscription.pk,
            payer=subscription.payer_address,
            token_address=subscription.token_address,
            period_start=start,
        ),
    )


def typed_data(authorization: TransferAuthorization) -> dict[str, Any]:
    """EIP-712 typed data as eth_signTypedData_v4, viem's signTypedData and eth_account take
    it (integers as decimal strings: JSON numbers lose precision above 2^53)."""
    message = authorization.message()
    return {
        "types": {"EIP712Domain": EIP712_DOMAIN_TYPE, **TRANSFER_WITH_AUTHORIZATION_TYPES},
        "primaryType": "TransferWithAuthorization",
        "domain": authorization.domain(),
        "message": {
            **message,
            "value": str(authorization.value),
            "validAfter": str(authorization.valid_after),
            "validBefore": str(authorization.valid_before),
            "nonce": authorization.nonce,
        },
    }


# n, the order of secp256k1's group.
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def signature_is_canonical(signature: str) -> bool:
    """Whether the ``s`` of a 65-byte (r, s, v) signature is in the lower half of the curve
    order, as the token requires (EIP-2); a high-s twin of a valid signature recovers to the
    same signer but would fail on chain."""
    raw = signature.removeprefix("0x")
    return int(raw[64:128], 16) <= SECP256K1_ORDER // 2


def recover_signer(authorization: TransferAuthorization, signature: str) -> str:
    """The address whose key produced ``signature`` over ``authorization``."""
    signable = encode_typed_data(
        domain_data=authorization.domain(),
        message_types=TRANSFER_WITH_AUTHORIZATION_TYPES,
        message_data=authorization.message(),
    )
    return str(Account.recover_message(signable, signature=signature))


# --- reading --------------------------------------------------------------------------------


def _first_open_index(subscription: Subscription) -> int:
    """The earliest period not paid yet (waived and completed ones are owed nothing)."""
    return max(
        periods.period_index_at(
            anchor=subscription.billing_anchor,
            unit=subscription.interval_unit,
            count=subscription.interval_count,
            moment=subscription.next_payment_due_at,
        ),
        0,
    )


@dataclass(frozen=True)
class UnsignedPeriod:
    period_index: int
    period_start: datetime
    period_end: datetime
    signed: bool
    authorization: TransferAuthorization


def authorization_unsigned_list(*, subscription: Subscription, count: int) -> list[UnsignedPeriod]:
    """What the payer should sign for the next ``count`` periods: from the earliest unpaid
    period whose window has not ended, skipping paid ones."""
    if not subscription.is_presigned:
        raise NotPresigned("This subscription is custodial: its own wallet signs its payments.")
    if subscription.status == Subscription.Status.CANCELED:
        raise AuthorizationRejected("A canceled subscription needs no more authorizations.")
    now = int(time.time()) + MINIMUM_REMAINING_SECONDS
    index = _first_open_index(subscription)
    while int(subscription.period_start(index + 1).timestamp()) <= now:
        index += 1
    settled = set(
        subscription.payments.filter(status__in=SETTLED_STATUSES, period_index__gte=index)
        .values_list("period_index", flat=True)
        .order_by()
    )
    stored = {
        row.period_index: row
        for row in PresignedAuthorization.objects.filter(
            subscription=subscription, period_index__gte=index, canceled_at__isnull=True
        )
    }
    result: list[UnsignedPeriod] = []
    while len(result) < count:
        if index not in settled:
            requested = requested_authorization(subscription=subscription, index=index)
            row = stored.get(index)
            result.append(
                UnsignedPeriod(
                    period_index=index,
                    period_start=subscription.period_start(index),
                    period_end=subscription.period_start(index + 1),
                    signed=row is not None and _stored_matches(row, requested),
                    authorization=requested,
                )
            )
        index += 1
    return result


# --- uploading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadedAuthorization:
    """One uploaded signature: the period, what the payer says they signed, the signature."""

    period_index: int
    signature: str
    message: dict[str, Any]
    domain: dict[str, Any] | None = None


def _same(field: str, expected: Any, given: Any) -> bool:
    if given is None:
        return False
    if field in ("from", "to", "verifyingContract"):
        return (
            isinstance(given, str) and is_hex_address(given) and given.lower() == expected.lower()
        )
    if field == "nonce":
        return isinstance(given, str) and given.lower() == str(expected).lower()
    if field in ("name", "version"):
        return bool(given == expected)
    try:
        return int(str(given), 0) == int(expected)
    except (TypeError, ValueError):
        return False


def _check_one(
    *, position: int, item: UploadedAuthorization, subscription: Subscription, settled: set[int]
) -> TransferAuthorization:
    where = f"authorizations[{position}]"
    if item.period_index < _first_open_index(subscription) or item.period_index in settled:
        raise AuthorizationRejected(f"{where}: period {item.period_index} is already paid.")
    requested = requested_authorization(subscription=subscription, index=item.period_index)
    if requested.valid_before <= int(time.time()) + MINIMUM_REMAINING_SECONDS:
        raise AuthorizationRejected(
            f"{where}: the window of period {item.period_index} has ended "
            f"(validBefore {requested.valid_before}); it cannot be paid by a pre-signed "
            "authorization any more."
        )
    asked_message = typed_data(requested)["message"]
    for field, expected in asked_message.items():
        if not _same(field, expected, item.message.get(field)):
            raise AuthorizationRejected(
                f"{where}.message.{field}: expected {expected}, got {item.message.get(field)!r} "
                f"(sign what GET .../authorizations/unsigned returns)."
            )
    if item.domain is not None:
        for field, expected in requested.domain().items():
            if not _same(field, expected, item.domain.get(field)):
                raise AuthorizationRejected(
                    f"{where}.domain.{field}: expected {expected}, got {item.domain.get(field)!r}."
                )
    if not signature_is_canonical(item.signature):
        raise AuthorizationRejected(
            f"{where}.signature: s is in the upper half of the curve order (a malleable, "
            "non-canonical signature, which the token refuses, EIP-2); sign again with a "
            "standard library (eth_account, viem and wallets produce low-s signatures)."
        )
    try:
        signer = recover_signer(requested, item.signature)
    except Exception as exc:
        raise AuthorizationRejected(
            f"{where}.signature: not a valid 65-byte ECDSA signature ({type(exc).__name__})."
        ) from exc
    if signer != requested.payer:
        raise AuthorizationRejected(
            f"{where}.signature: recovers to {signer}, not the payer {requested.payer} (signed "
            "by another key, or over another domain: chain id, token, name or version). "
            "Smart-contract wallets (EIP-1271) are not supported."
        )
    return requested


def authorization_upload(
    *, subscription: Subscription, user: Any, items: Iterable[UploadedAuthorization]
) -> list[PresignedAuthorization]:
    """Verify every uploaded authorization (it recovers to the payer and each field is what
    we would have asked), then store them all, replacing earlier ones of the same periods.
    One bad item rejects the whole upload (400 with the reason)."""
    items = list(items)
    if subscription.owner_id != getattr(user, "pk", None):
        raise NotOwner("Only the subscription's owner can upload its authorizations.")
    if not items:
        raise AuthorizationRejected("Send at least one authorization.")
    if len(items) > MAX_PERIODS_PER_REQUEST:
        raise AuthorizationRejected(
            f"At most {MAX_PERIODS_PER_REQUEST} authorizations per request."
        )
    indexes = [item.period_index for item in items]
    if len(set(indexes)) != len(indexes):
        raise AuthorizationRejected("Each period may appear once per upload.")
    stored: list[PresignedAuthorization] = []
    with transaction.atomic():
        # Checked against the subscription's current terms, held still while we store.
        subscription = subscription_lock(subscription)
        if not subscription.is_presigned:
            raise NotPresigned("This subscription is custodial: its own wallet signs.")
        if subscription.status == Subscription.Status.CANCELED:
            raise AuthorizationRejected("A canceled subscription takes no authorizations.")
        settled = set(
            subscription.payments.filter(status__in=SETTLED_STATUSES, period_index__in=indexes)
            .values_list("period_index", flat=True)
            .order_by()
        )
        checked = [
            (item, _check_one(position=n, item=item, subscription=subscription, settled=settled))
            for n, item in enumerate(items)
        ]
        for item, requested in checked:
            row, _ = PresignedAuthorization.objects.update_or_create(
                subscription=subscription,
                period_start=subscription.period_start(item.period_index),
                defaults={
                    "period_index": item.period_index,
                    "payer_address": requested.payer,
                    "recipient_address": requested.recipient,
                    "token_address": requested.token_address,
                    "chain_id": requested.chain_id,
                    "value_atomic": requested.value,
                    "valid_after": requested.valid_after,
                    "valid_before": requested.valid_before,
                    "nonce": requested.nonce,
                    "signature": _normalized_signature(item.signature),
                    "canceled_at": None,
                },
            )
            stored.append(row)
    return stored


def _normalized_signature(signature: str) -> str:
    return "0x" + signature.lower().removeprefix("0x")


# --- paying ---------------------------------------------------------------------------------


def stored_authorization(payment: Payment) -> PresignedAuthorization | None:
    """The uploaded authorization of ``payment``'s period, if any (canceled ones too)."""
    return PresignedAuthorization.objects.filter(
        subscription_id=payment.subscription_id, period_start=payment.period_start
    ).first()


def subscription_intent(payment: Payment, intent: PaymentIntent) -> PaymentIntent:
    """What the subscription's mode adds to a payment's intent.

    Pre-signed: the payment is made within the window its payer signed, not one starting now
    (the rail must ask for exactly the stored authorization). x402 HTTP: the service's paid
    endpoint, through which the period is paid.
    """
    subscription = payment.subscription
    if subscription.resource_url:
        intent = replace(
            intent,
            resource_url=subscription.resource_url,
            resource_method=subscription.resource_method,
        )
    if subscription.mode != Subscription.Mode.PRESIGNED:
        return intent
    row = stored_authorization(payment)
    if row is None:
        return intent  # the signer fails the job with authorization_missing
    return replace(intent, valid_after=row.valid_after, valid_before=row.valid_before)


def _stored_matches(row: PresignedAuthorization, asked: TransferAuthorization) -> bool:
    return mismatch(row, asked) is None


def mismatch(row: PresignedAuthorization, asked: TransferAuthorization) -> str | None:
    """Which field of the stored authorization differs from what is asked now, if any."""
    pairs = {
        "payer": (row.payer_address, asked.payer),
        "recipient": (row.recipient_address, asked.recipient),
        "token": (row.token_address, asked.token_address),
        "chain id": (row.chain_id, asked.chain_id),
        "amount": (int(row.value_atomic), asked.value),
        "validAfter": (row.valid_after, asked.valid_after),
        "validBefore": (row.valid_before, asked.valid_before),
        "nonce": (row.nonce, asked.nonce),
    }
    for name, (stored, wanted) in pairs.items():
        if str(stored).lower() != str(wanted).lower():
            return f"{name} was signed as {stored}, the payment asks {wanted}"
    return None
