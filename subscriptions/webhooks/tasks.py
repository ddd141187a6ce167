"""Webhook tasks: one attempt of one delivery, and the dispatcher of due deliveries.

Task names are stable (django-celery-beat rows store them), so they keep the ``autopay.``
prefix they were created with.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import close_old_connections

from subscriptions.webhooks import delivery

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name="autopay.deliver_webhook",
    acks_late=True,
    ignore_result=True,
    # The delivery's row holds its attempts and next time; Celery's counter is not the limit.
    max_retries=None,
)
def deliver_webhook(self: Any, delivery_id: int) -> str:
    """One attempt of one webhook delivery; a short retry is scheduled here, a long one by
    the dispatcher."""
    close_old_connections()
    outcome = delivery.webhook_deliver(delivery_id=delivery_id)
    if outcome.retry_in is not None:
        delivery.webhook_schedule_retry(delivery_id=delivery_id, retry_in=outcome.retry_in)
    return outcome.status


@shared_task(bind=True, name="autopay.dispatch_webhooks", acks_late=True, ignore_result=True)
def dispatch_webhooks(self: Any) -> int:
    """Publish due webhook deliveries: retries whose time came, lost messages, dead sends."""
    published = delivery.webhook_deliveries_dispatch()
    if published:
        logger.info("dispatched %d webhook delivery(ies)", published)
    return published
