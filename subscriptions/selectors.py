"""Read-side queries for subscriptions and payments, always scoped to the requesting user."""

from __future__ import annotations

import time
from typing import Any

from django.db.models import Count, F, Q, QuerySet

from subscriptions.models import PayerWallet, Payment, PresignedAuthorization, Subscription


def _usable_authorizations(*, prefix: str = "") -> Q:
    """Stored pre-signed authorizations of coming (unpaid) periods whose window is still open
    and that the payer has not canceled on chain."""
    return Q(
        **{
            f"{prefix}canceled_at__isnull": True,
            f"{prefix}valid_before__gt": int(time.time())
            + PresignedAuthorization.MINIMUM_REMAINING_SECONDS,
        }
    )


def signed_periods_remaining(*, subscription: Subscription) -> int:
    """How many coming periods of a pre-signed subscription the payer has already signed."""
    return (
        PresignedAuthorization.objects.filter(
            subscription=subscription, period_start__gte=subscription.next_payment_due_at
        )
        .filter(_usable_authorizations())
        .count()
    )


def with_signed_periods(queryset: QuerySet[Subscription]) -> QuerySet[Subscription]:
    """``signed_periods_remaining`` of each subscription in one query (for lists)."""
    return queryset.annotate(
        signed_periods=Count(
            "authorizations",
            filter=_usable_authorizations(prefix="authorizations__")
            & Q(authorizations__period_start__gte=F("next_payment_due_at")),
        )
    ).order_by("-created_at", "-id")


def subscription_list(*, user: Any) -> QuerySet[Subscription]:
    queryset = Subscription.objects.select_related("wallet")
    if user.is_staff:
        return queryset
    return queryset.filter(owner=user)


def payment_list(*, user: Any) -> QuerySet[Payment]:
    queryset = Payment.objects.select_related("subscription")
    if user.is_staff:
        return queryset
    return queryset.filter(subscription__owner=user)


def wallet_list(*, user: Any) -> QuerySet[PayerWallet]:
    queryset = PayerWallet.objects.all()
    if user.is_staff:
        return queryset
    return queryset.filter(owner=user)
