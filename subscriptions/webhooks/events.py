"""The events of payments and subscriptions, with the object in the API's own shape."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from subscriptions.api.serializers import PaymentOutputSerializer, SubscriptionOutputSerializer
from subscriptions.models import Payment, Subscription
from subscriptions.webhooks.models import EventType
from subscriptions.webhooks.services import webhook_event_record, webhook_events_record

# A subscription entering one of these statuses is an event.
SUBSCRIPTION_STATUS_EVENTS = {
    Subscription.Status.PAST_DUE: EventType.SUBSCRIPTION_PAST_DUE,
    Subscription.Status.UNPAID: EventType.SUBSCRIPTION_UNPAID,
    Subscription.Status.CANCELED: EventType.SUBSCRIPTION_CANCELED,
}


def payment_data(payment: Payment) -> dict[str, Any]:
    return dict(PaymentOutputSerializer(payment).data)


def subscription_data(subscription: Subscription) -> dict[str, Any]:
    return dict(SubscriptionOutputSerializer(subscription).data)


def payment_event_record(*, payment: Payment, owner_id: Any, type: str) -> None:
    """Within the transaction that changed ``payment``."""
    webhook_event_record(owner_id=owner_id, type=type, data=lambda: payment_data(payment))


def subscription_status_event_record(*, subscription: Subscription, previous_status: str) -> None:
    """An event when the subscription entered past_due, unpaid or canceled (within the
    transaction that moved it)."""
    if subscription.status == previous_status:
        return
    event_type = SUBSCRIPTION_STATUS_EVENTS.get(Subscription.Status(subscription.status))
    if event_type is not None:
        webhook_event_record(
            owner_id=subscription.owner_id,
            type=event_type,
            data=lambda: subscription_data(subscription),
        )


def payments_waived_record(*, payment_ids: Iterable[int]) -> None:
    """payment.waived for periods recorded as waived (the scan's bulk insert, a trigger)."""
    ids = list(payment_ids)
    if not ids:
        return
    payments = Payment.objects.filter(pk__in=ids).select_related("subscription").order_by("pk")
    webhook_events_record(
        events=(
            (payment.subscription.owner_id, EventType.PAYMENT_WAIVED, payment_data(payment))
            for payment in payments
        )
    )


def payments_succeeded_record(*, payments: Iterable[tuple[int, Any]]) -> None:
    """payment.succeeded for payments completed together (a batch settlement), given as
    (payment id, owner id); each payload is read only for an owner who has an endpoint."""

    def data(payment_id: int) -> Any:
        return lambda: payment_data(Payment.objects.get(pk=payment_id))

    webhook_events_record(
        events=[
            (owner_id, EventType.PAYMENT_SUCCEEDED, data(payment_id))
            for payment_id, owner_id in payments
        ]
    )
