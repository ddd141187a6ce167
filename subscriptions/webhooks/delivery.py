"""Sending webhooks: one attempt of one delivery, and the dispatcher of due deliveries.

Standard Webhooks: ``webhook-id`` (the event's id, the same on every attempt), ``webhook-
timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` by the ``standardwebhooks``
package, a second one with the previous secret while a rotation's grace lasts). The request
goes to the address the SSRF check resolved and approved (``subscriptions.webhooks.network``),
with no redirects and a WEBHOOK_TIMEOUT_SECONDS limit on the whole attempt. Nothing here runs
inside a transaction; the delivery's state is written by the services before and after.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import urllib3
from django.conf import settings
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from subscriptions.webhooks import services
from subscriptions.webhooks.models import WebhookDelivery, WebhookEvent
from subscriptions.webhooks.network import Destination, WebhookUrlRefused, webhook_destination

logger = logging.getLogger(__name__)

USER_AGENT = "auto-pay-webhooks/1"
# Retries sooner than this are scheduled by the task itself (a countdown message, well within
# the broker's visibility timeout); later ones by the dispatcher.
SHORT_RETRY_SECONDS = 60.0
# A published message that has not led to an attempt after this is taken as lost.
REPUBLISH_AFTER_SECONDS = 120.0
_EXCERPT_BYTES = 1000


@dataclass(frozen=True)
class DeliveryOutcome:
    status: str
    retry_in: float | None = None


def event_payload(event: WebhookEvent) -> bytes:
    """The body: the event's id, type, time and object; the same bytes on every attempt."""
    body = {
        "id": event.public_id,
        "type": event.type,
        "timestamp": event.created_at.astimezone(UTC).isoformat(),
        "data": event.data,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def signed_headers(
    *, message_id: str, payload: bytes, secrets: list[str], at: datetime
) -> dict[str, str]:
    signatures = [
        Webhook(secret).sign(msg_id=message_id, timestamp=at, data=payload.decode())
        for secret in secrets
    ]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def _post(destination: Destination, payload: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST to the checked address itself (TLS still verifies the host name)."""
    timeout = float(settings.WEBHOOK_TIMEOUT_SECONDS)
    address = destination.addresses[0]
    pool: urllib3.HTTPConnectionPool
    if destination.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address,
            destination.port,
            server_hostname=destination.host,
            assert_hostname=destination.host,
            cert_reqs="CERT_REQUIRED",
            retries=False,
            timeout=urllib3.Timeout(total=timeout),
        )
    else:
        pool = urllib3.HTTPConnectionPool(
            address, destination.port, retries=False, timeout=urllib3.Timeout(total=timeout)
        )
    try:
        response = pool.urlopen(
            "POST",
            destination.path,
            body=payload,
            headers={**headers, "host": destination.host_header},
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
        )
        excerpt = response.read(_EXCERPT_BYTES, decode_content=False)
        response.release_conn()
        return response.status, excerpt.decode(errors="replace")
    finally:
        pool.close()


def webhook_deliver(*, delivery_id: int) -> DeliveryOutcome:
    """One attempt of one delivery. Safe to call any number of times: only a due, pending
    delivery of an enabled endpoint is claimed, by one caller."""
    timeout = float(settings.WEBHOOK_TIMEOUT_SECONDS)
    delivery = services.webhook_delivery_claim(delivery_id=delivery_id, lease_seconds=timeout + 60)
    if delivery is None:
        return DeliveryOutcome("skipped")
    event, endpoint = delivery.event, delivery.endpoint
    attempted_at = timezone.now()
    started = time.monotonic()
    status_code: int | None = None
    excerpt = error = ""
    try:
        payload = event_payload(event)
        headers = signed_headers(
            message_id=event.public_id,
            payload=payload,
            secrets=services.webhook_endpoint_secrets(endpoint=endpoint, now=attempted_at),
            at=attempted_at,
        )
        destination = webhook_destination(endpoint.url)
        status_code, excerpt = _post(destination, payload, headers)
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except WebhookUrlRefused as exc:
        error = exc.message
    except urllib3.exceptions.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    except Exception as exc:  # a bug must not leave the delivery 'sending' until its lease ends
        logger.exception("webhook delivery %s: unexpected error", delivery_id)
        error = f"internal error: {type(exc).__name__}"
    duration_ms = int((time.monotonic() - started) * 1000)
    recorded = services.webhook_delivery_record_attempt(
        delivery=delivery,
        attempted_at=attempted_at,
        duration_ms=duration_ms,
        status_code=status_code,
        error=error,
        response_excerpt=excerpt,
    )
    if recorded.status == WebhookDelivery.Status.PENDING and recorded.next_attempt_at:
        retry_in = max((recorded.next_attempt_at - timezone.now()).total_seconds(), 0.0)
        logger.info(
            "webhook delivery %s to endpoint %s failed (%s); retry in %.1fs",
            delivery_id,
            endpoint.pk,
            error,
            retry_in,
        )
        return DeliveryOutcome("retrying", retry_in=retry_in)
    if recorded.status == WebhookDelivery.Status.FAILED:
        logger.warning(
            "webhook delivery %s gave up after %d attempts", delivery_id, recorded.attempts
        )
    return DeliveryOutcome(recorded.status)


def webhook_schedule_retry(*, delivery_id: int, retry_in: float) -> bool:
    """A short retry is published now with a countdown (and marked published, so the
    dispatcher does not send it twice); a long one is left to the dispatcher."""
    if retry_in > SHORT_RETRY_SECONDS:
        return False
    services.webhook_deliveries_publish(delivery_ids=[delivery_id], countdown=retry_in)
    services.webhook_delivery_mark_published(delivery_id=delivery_id, at=timezone.now())
    return True


def webhook_deliveries_dispatch(*, batch_size: int = 500) -> int:
    """Publish due deliveries (retries whose time came, messages lost, sends whose worker
    died). Run by beat every WEBHOOK_DISPATCH_INTERVAL_SECONDS; safe to run concurrently."""
    published = 0
    while True:
        due = services.webhook_deliveries_due(
            limit=batch_size, republish_after_seconds=REPUBLISH_AFTER_SECONDS
        )
        if due:
            published += services.webhook_deliveries_publish(delivery_ids=due)
        if len(due) < batch_size:
            return published
