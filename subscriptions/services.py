"""Business rules for subscriptions and payments (writes)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Subquery
from django.db.models.functions import Coalesce, Least
from django.utils import timezone
from eth_account import Account

from core.errors import ServiceError, StateConflict
from subscriptions import errors, periods, validators
from subscriptions.custody import encrypt_private_key
from subscriptions.models import PayerWallet, Payment, PresignedAuthorization, Subscription
from subscriptions.webhooks import events as webhook_events
from subscriptions.webhooks.models import EventType

logger = logging.getLogger(__name__)


class SubscriptionStateError(ServiceError):
    """The subscription is in a state that does not allow the operation (HTTP 400)."""

    code = "subscription_state"


class PaymentConflict(StateConflict):
    """The period's payment is already in flight or paid (HTTP 409)."""

    code = "payment_conflict"


class ForeignWallet(SubscriptionStateError):
    """The wallet does not belong to the subscription's owner (HTTP 400). Checked here as well
    as in the serializer, so that no caller (admin, command, a future API) can skip it."""

    code = "foreign_wallet"


def _check_payer(*, mode: str, owner_id: Any, wallet: Any, payer_address: str) -> None:
    """Custodial: the owner's own wallet pays. Pre-signed: no wallet; the payer address is
    whoever will sign each period (they prove it with every signature)."""
    if mode == Subscription.Mode.PRESIGNED:
        if wallet is not None:
            raise ForeignWallet("A pre-signed subscription has no server-held wallet.")
        try:
            validators.validate_checksum_address(payer_address)
        except DjangoValidationError as exc:
            raise SubscriptionStateError(f"payer_address: {exc.messages[0]}") from exc
        return
    _check_wallet(owner_id=owner_id, wallet=wallet, payer_address=payer_address)


def _check_resource_url(url: str) -> None:
    if not url:
        return
    try:
        validators.validate_resource_url(url)
    except DjangoValidationError as exc:
        raise SubscriptionStateError(f"resource_url: {exc.messages[0]}") from exc


def _check_wallet(*, owner_id: Any, wallet: Any, payer_address: str) -> None:
    if wallet is None:
        raise ForeignWallet("A custodial subscription needs one of its owner's wallets.")
    if wallet.owner_id != owner_id:
        raise ForeignWallet("The wallet belongs to another user.")
    if payer_address != wallet.address:
        raise ForeignWallet("The payer address must be the wallet's address.")


# A payment in one of these states is owed nothing more.
SETTLED_STATUSES = (Payment.Status.COMPLETED, Payment.Status.WAIVED)

UPDATABLE_FIELDS = (
    "service_name",
    "recipient_address",
    "amount",
    "auto_pay_enabled",
    "wallet",
    "payer_address",
    "resource_url",
    "resource_method",
)


def wallet_create(*, owner: Any, label: str = "") -> PayerWallet:
    """Generate a new payer key; store it encrypted and return the wallet (address only)."""
    account = Account.create()
    return PayerWallet.objects.create(
        owner=owner,
        label=label,
        address=account.address,
        encrypted_private_key=encrypt_private_key(bytes(account.key)),
    )


def subscription_create(
    *,
    owner: Any,
    service_name: str,
    payer_address: str,
    recipient_address: str,
    amount: Decimal,
    token_address: str,
    network: str,
    interval_unit: str = Subscription.IntervalUnit.MONTH,
    interval_count: int = 1,
    billing_anchor: datetime | None = None,
    auto_pay_enabled: bool = True,
    wallet: Any = None,
    token_decimals: int | None = None,
    mode: str = Subscription.Mode.CUSTODIAL,
    resource_url: str = "",
    resource_method: str = "GET",
) -> Subscription:
    """Create a subscription whose first period starts at ``billing_anchor`` (default now).

    Custodial: paid from ``wallet``, which must be the owner's and hold ``payer_address``'s
    key. Pre-signed: no wallet; ``payer_address`` signs each period in advance.
    """
    _check_payer(mode=mode, owner_id=owner.pk, wallet=wallet, payer_address=payer_address)
    _check_resource_url(resource_url)
    if not periods.interval_is_bounded(unit=interval_unit, count=interval_count):
        raise SubscriptionStateError("One billing period may last at most ten years.")
    anchor = billing_anchor or timezone.now()
    subscription = Subscription(
        owner=owner,
        service_name=service_name,
        mode=mode,
        resource_url=resource_url,
        resource_method=resource_method,
        payer_address=payer_address,
        recipient_address=recipient_address,
        amount=amount,
        token_address=token_address,
        token_decimals=settings.TOKEN_DECIMALS if token_decimals is None else token_decimals,
        network=network,
        interval_unit=interval_unit,
        interval_count=interval_count,
        billing_anchor=anchor,
        next_payment_due_at=anchor,
        next_period_index=0,
        next_period_due_at=anchor,
        auto_pay_enabled=auto_pay_enabled,
        wallet=wallet,
    )
    subscription.save()
    return subscription


def subscription_lock(subscription: Subscription) -> Subscription:
    """The subscription's row, locked for this transaction: decisions use its current state,
    never the caller's (possibly stale) copy."""
    return Subscription.objects.select_for_update().get(pk=subscription.pk)


def subscription_update(*, subscription: Subscription, **changes: Any) -> Subscription:
    """Change what future payments use; payments already created keep their snapshot."""
    unknown = set(changes) - set(UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"fields cannot be updated: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        subscription = subscription_lock(subscription)
        if subscription.status == Subscription.Status.CANCELED:
            raise SubscriptionStateError("A canceled subscription cannot be changed.")
        _check_resource_url(changes.get("resource_url", ""))
        for field, value in changes.items():
            setattr(subscription, field, value)
        if "wallet" in changes or "payer_address" in changes:
            _check_payer(
                mode=subscription.mode,
                owner_id=subscription.owner_id,
                wallet=subscription.wallet,
                payer_address=subscription.payer_address,
            )
        subscription.save(update_fields=[*changes, "updated_at"])
    return subscription


def subscription_pause(*, subscription: Subscription) -> Subscription:
    with transaction.atomic():
        subscription = subscription_lock(subscription)
        if subscription.status == Subscription.Status.CANCELED:
            raise SubscriptionStateError("A canceled subscription cannot be paused.")
        if subscription.status == Subscription.Status.PAUSED:
            return subscription
        subscription.status = Subscription.Status.PAUSED
        subscription.paused_at = timezone.now()
        subscription.save(update_fields=["status", "paused_at", "updated_at"])
    return subscription


def subscription_resume(*, subscription: Subscription) -> Subscription:
    """Resume a paused or unpaid subscription.

    Periods that began while it was paused are not charged: the scheduling cursor moves to
    the period that contains now. Failed payments still owed are retried at once through
    the dunning path (the subscription comes back as past_due until they are paid).
    """
    now = timezone.now()
    with transaction.atomic():
        subscription = subscription_lock(subscription)
        if subscription.status == Subscription.Status.CANCELED:
            raise SubscriptionStateError("A canceled subscription cannot be resumed.")
        if subscription.status in (Subscription.Status.ACTIVE, Subscription.Status.PAST_DUE):
            return subscription
        # A subscription the engine paused (a foreign wallet) resumes only once it pays from
        # one of its owner's own wallets.
        wallet = subscription.wallet
        if subscription.status_reason or (wallet and wallet.owner_id != subscription.owner_id):
            _check_payer(
                mode=subscription.mode,
                owner_id=subscription.owner_id,
                wallet=wallet,
                payer_address=subscription.payer_address,
            )
        subscription.status_reason = ""
        if subscription.status == Subscription.Status.PAUSED:
            current = periods.period_index_at(
                anchor=subscription.billing_anchor,
                unit=subscription.interval_unit,
                count=subscription.interval_count,
                moment=now,
            )
            if current > subscription.next_period_index:
                subscription.next_period_index = current
                subscription.next_period_due_at = subscription.period_start(current)
        owed = subscription.payments.filter(status=Payment.Status.FAILED).exists()
        previous_status = subscription.status
        subscription.status = Subscription.Status.PAST_DUE if owed else Subscription.Status.ACTIVE
        subscription.dunning_attempts = 0
        subscription.dunning_next_retry_at = now if owed else None
        subscription.paused_at = None
        subscription.save()
        _refresh_next_payment_due(subscription)
        webhook_events.subscription_status_event_record(
            subscription=subscription, previous_status=previous_status
        )
    return subscription


def subscription_cancel(*, subscription: Subscription) -> Subscription:
    with transaction.atomic():
        subscription = subscription_lock(subscription)
        if subscription.status == Subscription.Status.CANCELED:
            return subscription
        previous_status = subscription.status
        subscription.status = Subscription.Status.CANCELED
        subscription.canceled_at = timezone.now()
        subscription.auto_pay_enabled = False
        subscription.save(update_fields=["status", "canceled_at", "auto_pay_enabled", "updated_at"])
        webhook_events.subscription_status_event_record(
            subscription=subscription, previous_status=previous_status
        )
    return subscription


def _refresh_next_payment_due(subscription: Subscription) -> None:
    """next_payment_due_at = start of the earliest period not yet paid."""
    earliest_open = (
        subscription.payments.exclude(status__in=SETTLED_STATUSES)
        .order_by("period_start")
        .values_list("period_start", flat=True)
        .first()
    )
    due = subscription.next_period_due_at
    if earliest_open is not None:
        due = min(earliest_open, due)
    if due != subscription.next_payment_due_at:
        Subscription.objects.filter(pk=subscription.pk).update(
            next_payment_due_at=due, updated_at=timezone.now()
        )
        subscription.next_payment_due_at = due


def payment_build(*, subscription: Subscription, index: int) -> Payment:
    """An unsaved Payment for the subscription's ``index``-th period."""
    return Payment(
        subscription=subscription,
        period_index=index,
        period_start=subscription.period_start(index),
        period_end=subscription.period_start(index + 1),
        amount=subscription.amount,
        payer_address=subscription.payer_address,
        wallet_id=subscription.wallet_id,
        recipient_address=subscription.recipient_address,
        token_address=subscription.token_address,
        token_decimals=subscription.token_decimals,
        network=subscription.network,
    )


def payment_take_due(*, subscription: Subscription, now: datetime) -> Payment:
    """The payment of the subscription's earliest due, unpaid period, created when needed
    (missed periods beyond the limit waived first), on the subscription's locked row; the
    caller holds the transaction. For a manual charge (jobs.services.payment_trigger).

    Raises SubscriptionStateError (400) when the subscription cannot be charged now,
    PaymentConflict (409) when nothing is due or the period is already paid.
    """
    # Serialises triggers on one subscription; the scan skips rows locked here (SKIP
    # LOCKED) and takes them on its next run. The checks run on the locked row.
    subscription = subscription_lock(subscription)
    if not subscription.is_chargeable:
        # The state first: canceling also turns auto-pay off, and "canceled" is the reason.
        if subscription.status == Subscription.Status.CANCELED:
            raise SubscriptionStateError("Subscription is canceled; it cannot be charged.")
        if subscription.status not in Subscription.CHARGEABLE_STATUSES:
            raise SubscriptionStateError(
                f"Subscription is {subscription.status}; only active or past-due "
                "subscriptions can be charged."
            )
        raise SubscriptionStateError("Auto-pay is not enabled for this subscription.")
    payment = (
        subscription.payments.select_for_update()
        .exclude(status__in=SETTLED_STATUSES)
        .filter(period_start__lte=now)
        .order_by("period_start")
        .first()
    )
    if payment is None:
        if subscription.next_period_due_at > now:
            if subscription.next_period_index == 0:
                raise PaymentConflict(
                    "Nothing is due yet: the first billing period starts at "
                    f"{subscription.next_period_due_at.isoformat()}."
                )
            raise PaymentConflict(
                "The current billing period is already paid; the next payment is due at "
                f"{subscription.next_payment_due_at.isoformat()}."
            )
        _waive_missed_periods(subscription, now=now)
        payment = _payment_insert_or_get(
            subscription=subscription, index=subscription.next_period_index
        )
        _advance_cursor(subscription, past_index=payment.period_index)
    if payment.status == Payment.Status.COMPLETED:
        raise PaymentConflict("This period's payment is already completed.")
    _refresh_next_payment_due(subscription)
    return payment


def _waive_missed_periods(subscription: Subscription, *, now: datetime) -> None:
    """Record as waived the periods owed beyond AUTOPAY_MAX_MISSED_PERIODS (the scan's rule,
    for a manual trigger that reaches a subscription first) and move the cursor past them."""
    current = periods.period_index_at(
        anchor=subscription.billing_anchor,
        unit=subscription.interval_unit,
        count=subscription.interval_count,
        moment=now,
    )
    waived, _ = periods.missed_period_split(
        next_index=subscription.next_period_index,
        current_index=current,
        max_missed=settings.AUTOPAY_MAX_MISSED_PERIODS,
    )
    if not waived:
        return
    rows = []
    for index in waived:
        payment = payment_build(subscription=subscription, index=index)
        payment.status = Payment.Status.WAIVED
        rows.append(payment)
    # The subscription's row is locked: what exists now is what this did not create.
    existing = set(
        subscription.payments.filter(period_index__in=waived).values_list("period_index", flat=True)
    )
    Payment.objects.bulk_create(rows, ignore_conflicts=True)
    webhook_events.payments_waived_record(
        payment_ids=subscription.payments.filter(
            period_index__in=[index for index in waived if index not in existing]
        ).values_list("pk", flat=True)
    )
    _advance_cursor(subscription, past_index=waived[-1])


def _payment_insert_or_get(*, subscription: Subscription, index: int) -> Payment:
    candidate = payment_build(subscription=subscription, index=index)
    try:
        with transaction.atomic():
            candidate.save()
            return candidate
    except IntegrityError:
        return Payment.objects.select_for_update().get(
            subscription=subscription, period_start=candidate.period_start
        )


def _advance_cursor(subscription: Subscription, *, past_index: int) -> None:
    if subscription.next_period_index <= past_index:
        subscription.next_period_index = past_index + 1
        subscription.next_period_due_at = subscription.period_start(past_index + 1)
        subscription.save(update_fields=["next_period_index", "next_period_due_at", "updated_at"])


def payment_reopen(*, payment: Payment) -> None:
    """A failed payment becomes pending again before a new job tries it."""
    if payment.status == Payment.Status.FAILED:
        payment.status = Payment.Status.PENDING
        payment.error_code = ""
        payment.error_message = ""
        payment.save(update_fields=["status", "error_code", "error_message", "updated_at"])


def payment_record_success(
    *, payment: Payment, transaction_hash: str, block_number: int | None
) -> Payment:
    """Record a confirmed settlement and move the subscription's next due time on."""
    now = timezone.now()
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if locked.status != Payment.Status.COMPLETED:
            locked.status = Payment.Status.COMPLETED
            locked.transaction_hash = transaction_hash
            locked.block_number = block_number
            locked.error_code = ""
            locked.error_message = ""
            locked.completed_at = now
            locked.save()
            newly_completed = True
        else:
            newly_completed = False
        subscription = Subscription.objects.select_for_update().get(pk=locked.subscription_id)
        _advance_cursor(subscription, past_index=locked.period_index)
        if (
            subscription.status == Subscription.Status.PAST_DUE
            and not subscription.payments.filter(status=Payment.Status.FAILED).exists()
        ):
            subscription.status = Subscription.Status.ACTIVE
            subscription.dunning_attempts = 0
            subscription.dunning_next_retry_at = None
            subscription.save(
                update_fields=["status", "dunning_attempts", "dunning_next_retry_at", "updated_at"]
            )
        _refresh_next_payment_due(subscription)
        if newly_completed:
            webhook_events.payment_event_record(
                payment=locked, owner_id=subscription.owner_id, type=EventType.PAYMENT_SUCCEEDED
            )
    return locked


def payments_finalize(*, payment_ids: list[int], transaction_hash: str, block_number: int) -> int:
    """``payment_finalize`` for the payments of one transaction, in one statement."""
    if not payment_ids:
        return 0
    return Payment.objects.filter(
        pk__in=payment_ids,
        status=Payment.Status.COMPLETED,
        transaction_hash=transaction_hash,
        finalized_at__isnull=True,
    ).update(block_number=block_number, finalized_at=timezone.now())


def payment_move_settlement(*, payment: Payment, transaction_hash: str, block_number: int) -> bool:
    """A completed payment's settlement is in another block (re-mined after a reorg) or another
    transaction (the same authorization, submitted by someone else): record where it is."""
    return bool(
        Payment.objects.filter(
            pk=payment.pk, status=Payment.Status.COMPLETED, finalized_at__isnull=True
        ).update(transaction_hash=transaction_hash, block_number=block_number)
    )


def payment_reopen_after_reorg(*, payment: Payment, message: str) -> bool:
    """The completed payment's transaction left the canonical chain and its authorization is
    unused: the money did not move after all. It is owed again (pending; settled again with the
    same derived authorization nonce). Only the completion seen (same hash) is undone."""
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if (
            locked.status != Payment.Status.COMPLETED
            or locked.transaction_hash != payment.transaction_hash
            or locked.finalized_at is not None
        ):
            return False
        locked.status = Payment.Status.PENDING
        locked.transaction_hash = ""
        locked.block_number = None
        locked.completed_at = None
        locked.error_code = "chain_reorg"
        locked.error_message = message[:2000]
        locked.save()
        subscription = Subscription.objects.select_for_update().get(pk=locked.subscription_id)
        _refresh_next_payment_due(subscription)
    return True


def payment_await_settlement(*, payment: Payment, code: str, message: str) -> Payment:
    """The payment's transaction was broadcast and the chain has not answered for it: it is
    ``settlement_pending`` (not failed; the subscription is not touched) until the chain does.
    ``code``/``message`` say why it is waiting."""
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if locked.status == Payment.Status.COMPLETED:
            return locked
        locked.status = Payment.Status.SETTLEMENT_PENDING
        locked.error_code = code
        locked.error_message = message[:2000]
        locked.save(update_fields=["status", "error_code", "error_message", "updated_at"])
    return locked


def payments_record_success(
    *, payments: Sequence[Payment], transaction_hash: str, block_number: int | None
) -> int:
    """``payment_record_success`` for many payments settled by one transaction, in a few
    statements whatever their number: the payments completed, their subscriptions' next due
    times moved on (and their cursors, should one be behind), past-due subscriptions with
    nothing failed left active again, a payment.succeeded event for each payment this call
    completed (one already completed is left as it was). Returns how many it completed."""
    if not payments:
        return 0
    now = timezone.now()
    last_paid: dict[int, int] = {}
    for payment in payments:
        index = payment.period_index
        last_paid[payment.subscription_id] = max(
            index, last_paid.get(payment.subscription_id, index)
        )
    subscription_ids = sorted(last_paid)
    with transaction.atomic():
        # Subscriptions first, in id order (the order a manual trigger takes them in, before
        # their payments): the two never wait for each other in a circle.
        locked = list(
            Subscription.objects.select_for_update(
                no_key=connection.features.has_select_for_no_key_update
            )
            .filter(pk__in=subscription_ids)
            .order_by("pk")
            .values_list("pk", "next_period_index", "status", "owner_id")
        )
        newly_completed = list(
            Payment.objects.select_for_update()
            .filter(pk__in=[payment.pk for payment in payments])
            .exclude(status=Payment.Status.COMPLETED)
            .order_by("pk")
            .values_list("pk", "subscription_id")
        )
        completed = Payment.objects.filter(pk__in=[pk for pk, _ in newly_completed]).update(
            status=Payment.Status.COMPLETED,
            transaction_hash=transaction_hash,
            block_number=block_number,
            error_code="",
            error_message="",
            completed_at=now,
            updated_at=now,
        )
        # The scan and triggers move a cursor past each payment they create: rarely behind.
        behind = [pk for pk, cursor, _, _ in locked if cursor <= last_paid[pk]]
        for subscription in Subscription.objects.filter(pk__in=behind):
            _advance_cursor(subscription, past_index=last_paid[subscription.pk])
        if any(status == Subscription.Status.PAST_DUE for _, _, status, _ in locked):
            failed = Payment.objects.filter(
                subscription=OuterRef("pk"), status=Payment.Status.FAILED
            )
            Subscription.objects.filter(
                pk__in=subscription_ids, status=Subscription.Status.PAST_DUE
            ).exclude(Exists(failed)).update(
                status=Subscription.Status.ACTIVE,
                dunning_attempts=0,
                dunning_next_retry_at=None,
                updated_at=now,
            )
        earliest_open = (
            Payment.objects.filter(subscription=OuterRef("pk"))
            .exclude(status__in=SETTLED_STATUSES)
            .order_by("period_start")
            .values("period_start")[:1]
        )
        cursor_due = F("next_period_due_at")
        Subscription.objects.filter(pk__in=subscription_ids).update(
            next_payment_due_at=Coalesce(Least(Subquery(earliest_open), cursor_due), cursor_due)
        )
        owners = {pk: owner_id for pk, _, _, owner_id in locked}
        webhook_events.payments_succeeded_record(
            payments=[(pk, owners[subscription_id]) for pk, subscription_id in newly_completed]
        )
    return completed


def payment_record_failure(*, payment: Payment, code: str, message: str) -> Payment:
    """Record a final failure; when it is the customer's (``counts_toward_dunning``), hand the
    subscription to the dunning schedule."""
    now = timezone.now()
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if locked.status == Payment.Status.COMPLETED:
            return locked
        locked.status = Payment.Status.FAILED
        locked.error_code = code
        locked.error_message = message[:2000]
        locked.save(update_fields=["status", "error_code", "error_message", "updated_at"])
        if code == errors.AuthorizationCanceled.code:
            # The payer canceled this period's pre-signed authorization on chain: it is never
            # submitted again, and no longer counts as a signed period.
            PresignedAuthorization.objects.filter(
                subscription_id=locked.subscription_id, period_start=locked.period_start
            ).update(canceled_at=now)
        subscription = Subscription.objects.select_for_update().get(pk=locked.subscription_id)
        previous_status = subscription.status
        # Only the customer's own failures (and a service's refusal) count toward dunning: an
        # operator's, the infrastructure's or our own leave the subscription as it was.
        if errors.error_class(code).counts_toward_dunning() and subscription.status in (
            Subscription.Status.ACTIVE,
            Subscription.Status.PAST_DUE,
        ):
            schedule = settings.AUTOPAY_DUNNING_SCHEDULE_HOURS
            if subscription.dunning_attempts < len(schedule):
                delay = timedelta(hours=schedule[subscription.dunning_attempts])
                subscription.status = Subscription.Status.PAST_DUE
                subscription.dunning_next_retry_at = now + delay
            else:
                subscription.status = Subscription.Status.UNPAID
                subscription.dunning_next_retry_at = None
                logger.warning(
                    "subscription %s is unpaid after %d retries; auto-pay stopped",
                    subscription.pk,
                    subscription.dunning_attempts,
                )
            subscription.save(update_fields=["status", "dunning_next_retry_at", "updated_at"])
        _refresh_next_payment_due(subscription)
        webhook_events.payment_event_record(
            payment=locked, owner_id=subscription.owner_id, type=EventType.PAYMENT_FAILED
        )
        webhook_events.subscription_status_event_record(
            subscription=subscription, previous_status=previous_status
        )
    return locked
