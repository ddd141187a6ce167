"""Read-side queries for subscriptions and payments, always scoped to the requesting user."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from subscriptions.models import PayerWallet, Payment, Subscription


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
