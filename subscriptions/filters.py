"""Query filters of the subscription and payment lists (API and admin share the fields)."""

from __future__ import annotations

from django_filters import rest_framework as filters

from core.filters import (
    AmountFilter,
    ChoiceFilter,
    IdFilter,
    MultipleChoiceFilter,
    time_range,
)
from subscriptions.models import Payment, Subscription


class SubscriptionFilter(filters.FilterSet):
    status = MultipleChoiceFilter(
        choices=Subscription.Status.choices, help_text="One or more (repeat the parameter)."
    )
    auto_pay_enabled = filters.BooleanFilter()
    network = filters.CharFilter(help_text="CAIP-2 id, e.g. eip155:8453.")
    interval_unit = ChoiceFilter(choices=Subscription.IntervalUnit.choices)
    mode = ChoiceFilter(choices=Subscription.Mode.choices)
    service = filters.CharFilter(
        field_name="service_name", lookup_expr="icontains", help_text="Part of the service name."
    )
    wallet = IdFilter(field_name="wallet_id")
    amount_min = AmountFilter(field_name="amount", lookup_expr="gte")
    amount_max = AmountFilter(field_name="amount", lookup_expr="lte")
    created_after, created_before = time_range("created_at", "Created")
    next_payment_due_after, next_payment_due_before = time_range(
        "next_payment_due_at", "Next payment due"
    )

    class Meta:
        model = Subscription
        fields: tuple[str, ...] = ()


class PaymentFilter(filters.FilterSet):
    # A plain number, not a model choice: a choice filter validates the id against every
    # subscription, so another user's id (200) and a missing one (400) told them apart.
    subscription = IdFilter(field_name="subscription_id")
    status = MultipleChoiceFilter(
        choices=Payment.Status.choices, help_text="One or more (repeat the parameter)."
    )
    network = filters.CharFilter(help_text="CAIP-2 id, e.g. eip155:8453.")
    service = filters.CharFilter(
        field_name="subscription__service_name",
        lookup_expr="icontains",
        help_text="Part of the subscription's service name.",
    )
    error_code = filters.CharFilter(help_text="e.g. insufficient_balance.")
    transaction_hash = filters.CharFilter(lookup_expr="iexact")
    amount_min = AmountFilter(field_name="amount", lookup_expr="gte")
    amount_max = AmountFilter(field_name="amount", lookup_expr="lte")
    period_start_after, period_start_before = time_range("period_start", "Period start")
    completed_after, completed_before = time_range("completed_at", "Completed")
    created_after, created_before = time_range("created_at", "Created")

    class Meta:
        model = Payment
        fields: tuple[str, ...] = ()


# DRF search (``?search=``): service name, addresses and transaction hash.
SUBSCRIPTION_SEARCH_FIELDS = ("service_name", "payer_address", "recipient_address")
SUBSCRIPTION_ORDERING_FIELDS = (
    "id",
    "created_at",
    "next_payment_due_at",
    "amount",
    "status",
    "service_name",
)
PAYMENT_SEARCH_FIELDS = (
    "subscription__service_name",
    "payer_address",
    "recipient_address",
    "transaction_hash",
)
PAYMENT_ORDERING_FIELDS = (
    "id",
    "period_start",
    "created_at",
    "completed_at",
    "amount",
    "status",
)
