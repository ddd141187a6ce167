"""Query filters of the job list (API and admin share the fields)."""

from __future__ import annotations

from django_filters import rest_framework as filters

from core.filters import (
    AmountFilter,
    ChoiceFilter,
    IdFilter,
    MultipleChoiceFilter,
    time_range,
)
from jobs.models import Job


class JobFilter(filters.FilterSet):
    status = MultipleChoiceFilter(
        choices=Job.Status.choices, help_text="One or more (repeat the parameter)."
    )
    # A plain number: another user's subscription id answers like a missing one (empty).
    subscription = IdFilter(field_name="subscription_id")
    payment = IdFilter(field_name="payment_id")
    source = ChoiceFilter(choices=Job.Source.choices)
    error_code = filters.CharFilter(help_text="e.g. insufficient_balance, rpc_unavailable.")
    service = filters.CharFilter(
        field_name="subscription__service_name",
        lookup_expr="icontains",
        help_text="Part of the subscription's service name.",
    )
    network = filters.CharFilter(field_name="payment__network", help_text="CAIP-2 id.")
    amount_min = AmountFilter(field_name="payment__amount", lookup_expr="gte")
    amount_max = AmountFilter(field_name="payment__amount", lookup_expr="lte")
    created_after, created_before = time_range("created_at", "Created")
    finished_after, finished_before = time_range("finished_at", "Finished")

    class Meta:
        model = Job
        fields: tuple[str, ...] = ()


# DRF search (``?search=``): service name, payer and recipient addresses, transaction hash.
JOB_SEARCH_FIELDS = (
    "subscription__service_name",
    "payment__payer_address",
    "payment__recipient_address",
    "payment__transaction_hash",
)
JOB_ORDERING_FIELDS = ("created_at", "finished_at", "status", "attempts_made", "progress")
