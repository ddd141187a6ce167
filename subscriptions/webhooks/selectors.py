"""Read-side queries for webhooks, scoped to the requesting user (staff see every one)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from subscriptions.webhooks.models import WebhookDelivery, WebhookEndpoint


def webhook_endpoint_list(*, user: Any) -> QuerySet[WebhookEndpoint]:
    queryset = WebhookEndpoint.objects.all()
    if user.is_staff:
        return queryset
    return queryset.filter(owner=user)


def webhook_delivery_list(*, user: Any, endpoint_id: Any) -> QuerySet[WebhookDelivery]:
    queryset = WebhookDelivery.objects.select_related("event", "endpoint").filter(
        endpoint_id=endpoint_id
    )
    if user.is_staff:
        return queryset
    return queryset.filter(endpoint__owner=user)
