"""Webhook writes: endpoints and their secrets, events (the outbox), delivery state.

``webhook_event_record`` is called inside the transaction of the state change it reports
(``subscriptions.services``, ``jobs.services``, the scan), so an event exists if and only if
its change committed. Its deliveries are published to the queue after commit; a lost message
is published again by the dispatcher (``subscriptions.webhooks.delivery``), which also sends
the retries.
"""

from __future__ import annotations

import base64
import logging
import random
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from celery import current_app as app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.errors import ServiceError
from subscriptions.custody import (
    decrypt_private_key,
    encrypt_private_key,
    reencrypt_private_key,
)
from subscriptions.webhooks.models import (
    OPERATOR_EVENT_TYPES,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from subscriptions.webhooks.network import webhook_destination

logger = logging.getLogger(__name__)

DELIVER_TASK = "autopay.deliver_webhook"
SECRET_PREFIX = "whsec_"


class WebhookEndpointDisabled(ServiceError):
    code = "webhook_endpoint_disabled"


class WebhookEndpointLimit(ServiceError):
    """The user has as many endpoints as one may have (WEBHOOK_MAX_ENDPOINTS_PER_USER)."""

    status_code = 409
    code = "webhook_endpoint_limit"


# --- endpoints ---------------------------------------------------------------------------------


def _new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_endpoint_secrets(*, endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and the previous one during its grace."""
    found = [decrypt_private_key(endpoint.encrypted_secret).decode()]
    if (
        endpoint.previous_encrypted_secret
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > now
    ):
        found.append(decrypt_private_key(endpoint.previous_encrypted_secret).decode())
    return found


def webhook_endpoint_create(
    *,
    owner: Any,
    url: str,
    event_types: list[str] | None = None,
    description: str = "",
    enabled: bool = True,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (returned once, stored encrypted); at most
    WEBHOOK_MAX_ENDPOINTS_PER_USER per user, since every one is called for each event."""
    webhook_destination(url, resolve=True)
    secret = _new_secret()
    limit = int(settings.WEBHOOK_MAX_ENDPOINTS_PER_USER)
    with transaction.atomic():
        # The owner's row, locked: two creations at once cannot both take the last place.
        type(owner).objects.select_for_update().filter(pk=owner.pk).first()
        if WebhookEndpoint.objects.filter(owner=owner).count() >= limit:
            raise WebhookEndpointLimit(
                f"You have {limit} webhook endpoints, the most one user may have here "
                "(WEBHOOK_MAX_ENDPOINTS_PER_USER); delete one, or send several event types to "
                "one endpoint."
            )
        endpoint = WebhookEndpoint.objects.create(
            owner=owner,
            url=url,
            event_types=sorted(set(event_types or [])),
            description=description,
            enabled=enabled,
            encrypted_secret=encrypt_private_key(secret.encode()),
        )
    return endpoint, secret


def webhook_endpoint_update(*, endpoint: WebhookEndpoint, **changes: Any) -> WebhookEndpoint:
    """Change the URL, event types, description or enabled flag. Enabling an endpoint (again)
    clears its failure record and gives its kept deliveries a new retry window."""
    unknown = set(changes) - {"url", "event_types", "description", "enabled"}
    if unknown:
        raise ValueError(f"fields cannot be updated: {', '.join(sorted(unknown))}")
    if "url" in changes:
        webhook_destination(changes["url"], resolve=True)
    if "event_types" in changes:
        changes["event_types"] = sorted(set(changes["event_types"]))
    now = timezone.now()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        reenabled = changes.get("enabled") is True and not endpoint.enabled
        for field, value in changes.items():
            setattr(endpoint, field, value)
        if reenabled:
            endpoint.failing_since = None
            endpoint.disabled_at = None
            endpoint.disabled_reason = ""
            due = endpoint.deliveries.filter(status=WebhookDelivery.Status.PENDING)
            ids = list(due.values_list("pk", flat=True))
            due.update(
                next_attempt_at=now,
                retry_until=now + _retry_window(),
                published_at=now,
                updated_at=now,
            )
            _publish_on_commit(ids)
        elif changes.get("enabled") is False and endpoint.disabled_at is None:
            endpoint.disabled_at = now
            endpoint.disabled_reason = "disabled by its owner"
        endpoint.save()
    return endpoint


def webhook_endpoint_rotate_secret(*, endpoint: WebhookEndpoint) -> tuple[WebhookEndpoint, str]:
    """A new signing secret (returned once); the old one keeps signing beside it for
    WEBHOOK_SECRET_ROTATION_GRACE_HOURS, so the receiver can switch without losing events."""
    secret = _new_secret()
    now = timezone.now()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        endpoint.previous_encrypted_secret = endpoint.encrypted_secret
        endpoint.previous_secret_expires_at = now + timedelta(
            hours=settings.WEBHOOK_SECRET_ROTATION_GRACE_HOURS
        )
        endpoint.encrypted_secret = encrypt_private_key(secret.encode())
        endpoint.secret_rotated_at = now
        endpoint.save()
    return endpoint, secret


# --- events: the outbox ------------------------------------------------------------------------


# An event's object, or a function that makes it (called only if somebody will be told).
EventData = dict[str, Any] | Callable[[], dict[str, Any]]


def webhook_event_record(*, owner_id: Any, type: str, data: EventData) -> WebhookEvent | None:
    """Record an event of ``owner_id``'s and a delivery for each of their enabled endpoints
    that wants it; the deliveries are queued after the caller's transaction commits.

    Events are kept for users who have an endpoint (enabled or not), so that a disabled
    endpoint's owner loses nothing; for others there is nobody to tell and nothing is written.
    """
    recorded = webhook_events_record(events=[(owner_id, type, data)])
    return recorded[0] if recorded else None


def operator_event_record(*, type: str, data: dict[str, Any]) -> list[WebhookEvent]:
    """An operator event (``OPERATOR_EVENT_TYPES``): one for each active staff user who has
    an endpoint; never for an ordinary user, whatever event types their endpoints ask for."""
    assert type in OPERATOR_EVENT_TYPES, "not an operator event type"
    staff = (
        get_user_model()
        .objects.filter(is_staff=True, is_active=True, webhook_endpoints__isnull=False)
        .distinct()
        .values_list("pk", flat=True)
    )
    return webhook_events_record(events=[(owner_id, type, data) for owner_id in staff])


def webhook_events_record(*, events: Iterable[tuple[Any, str, EventData]]) -> list[WebhookEvent]:
    """``webhook_event_record`` for many events in a few statements (the scan's waived
    periods)."""
    wanted = list(events)
    if not wanted:
        return []
    assert all(type_ in EventType.values for _, type_, _ in wanted), "unknown event type"
    owners = {owner_id for owner_id, _, _ in wanted}
    endpoints: dict[Any, list[WebhookEndpoint]] = {}
    for endpoint in WebhookEndpoint.objects.filter(owner_id__in=owners).only(
        "pk", "owner_id", "enabled", "event_types"
    ):
        endpoints.setdefault(endpoint.owner_id, []).append(endpoint)
    rows = [
        WebhookEvent(owner_id=owner_id, type=type_, data=data() if callable(data) else data)
        for owner_id, type_, data in wanted
        if owner_id in endpoints
    ]
    if not rows:
        return []
    WebhookEvent.objects.bulk_create(rows)
    now = timezone.now()
    retry_until = now + _retry_window()
    deliveries = [
        WebhookDelivery(
            event=event,
            endpoint=endpoint,
            next_attempt_at=now,
            retry_until=retry_until,
            published_at=now if endpoint.enabled else None,
        )
        for event in rows
        for endpoint in endpoints[event.owner_id]
        if endpoint.wants(event.type)
    ]
    WebhookDelivery.objects.bulk_create(deliveries)
    _publish_on_commit(
        [delivery.pk for delivery in deliveries if delivery.published_at is not None]
    )
    return rows


def _publish_on_commit(delivery_ids: list[int]) -> None:
    """Queue the deliveries once the rows are committed. A failed publish only delays them:
    the dispatcher publishes due deliveries whose message was lost."""
    if not delivery_ids:
        return

    def publish() -> None:
        try:
            webhook_deliveries_publish(delivery_ids=delivery_ids)
        except Exception:
            logger.warning(
                "publishing %d webhook deliveries failed; the dispatcher will", len(delivery_ids)
            )

    transaction.on_commit(publish)


def webhook_deliveries_publish(
    *, delivery_ids: Iterable[int], countdown: float | None = None
) -> int:
    published = 0
    with app.producer_or_acquire() as producer:
        for delivery_id in delivery_ids:
            app.send_task(
                DELIVER_TASK, args=[int(delivery_id)], countdown=countdown, producer=producer
            )
            published += 1
    return published


# --- deliveries --------------------------------------------------------------------------------


def _retry_window() -> timedelta:
    return timedelta(hours=settings.WEBHOOK_RETRY_WINDOW_HOURS)


def webhook_retry_delay(*, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: exponential
    (base * 2^(n-1), capped), with jitter so that many failing deliveries spread out."""
    base = float(settings.WEBHOOK_RETRY_BASE_SECONDS)
    cap = float(settings.WEBHOOK_RETRY_MAX_DELAY_SECONDS)
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    return delay / 2 + random.uniform(0, delay / 2)


def webhook_delivery_claim(*, delivery_id: int, lease_seconds: float) -> WebhookDelivery | None:
    """Take a due delivery for one attempt (pending -> sending, with a lease); None when it is
    not due, already taken, finished, or its endpoint is disabled. One caller wins."""
    now = timezone.now()
    claimed = (
        WebhookDelivery.objects.filter(
            pk=delivery_id,
            status=WebhookDelivery.Status.PENDING,
            endpoint__enabled=True,
        )
        .filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + timedelta(seconds=1))
        )
        .update(
            status=WebhookDelivery.Status.SENDING,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
    )
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("event", "endpoint").get(pk=delivery_id)


def webhook_delivery_record_attempt(
    *,
    delivery: WebhookDelivery,
    attempted_at: datetime,
    duration_ms: int,
    status_code: int | None,
    error: str,
    response_excerpt: str = "",
) -> WebhookDelivery:
    """Log one attempt and move the delivery on: succeeded, pending again after a backoff, or
    failed once its retry window is over. An endpoint that has failed for
    WEBHOOK_DISABLE_AFTER_HOURS is disabled (its events are kept)."""
    succeeded = status_code is not None and 200 <= status_code < 300 and not error
    now = timezone.now()
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        WebhookAttempt.objects.create(
            delivery=locked,
            attempted_at=attempted_at,
            duration_ms=duration_ms,
            status_code=status_code,
            succeeded=succeeded,
            error=error[:500],
            response_excerpt=response_excerpt[:1000],
        )
        locked.attempts += 1
        locked.last_attempt_at = attempted_at
        locked.last_status_code = status_code
        locked.last_error = error[:500]
        locked.lease_expires_at = None
        if succeeded:
            locked.status = WebhookDelivery.Status.SUCCEEDED
            locked.delivered_at = now
            locked.next_attempt_at = None
            WebhookEndpoint.objects.filter(
                pk=locked.endpoint_id, failing_since__isnull=False
            ).update(failing_since=None, updated_at=now)
        else:
            delay = timedelta(seconds=webhook_retry_delay(attempts=locked.attempts))
            if now + delay > locked.retry_until:
                locked.status = WebhookDelivery.Status.FAILED
                locked.next_attempt_at = None
            else:
                locked.status = WebhookDelivery.Status.PENDING
                locked.next_attempt_at = now + delay
                locked.published_at = None
            _endpoint_failed(locked.endpoint_id, now=now)
        locked.save()
    return locked


def _endpoint_failed(endpoint_id: int, *, now: datetime) -> None:
    WebhookEndpoint.objects.filter(pk=endpoint_id, failing_since__isnull=True).update(
        failing_since=now, updated_at=now
    )
    limit = now - timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS)
    if WebhookEndpoint.objects.filter(
        pk=endpoint_id, enabled=True, failing_since__lte=limit
    ).update(
        enabled=False,
        disabled_at=now,
        disabled_reason=(
            f"disabled after failing for {settings.WEBHOOK_DISABLE_AFTER_HOURS:g} hours; "
            "its events are kept: enable it to receive them"
        ),
        updated_at=now,
    ):
        logger.warning("webhook endpoint %s disabled: failing since %s", endpoint_id, limit)


def webhook_delivery_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again now (whatever its state), with a new retry window; the event and
    so its ``webhook-id`` stay the same."""
    now = timezone.now()
    with transaction.atomic():
        locked = (
            WebhookDelivery.objects.select_for_update()
            .select_related("endpoint")
            .get(pk=delivery.pk)
        )
        if not locked.endpoint.enabled:
            raise WebhookEndpointDisabled("The endpoint is disabled; enable it first.")
        if locked.status == WebhookDelivery.Status.SENDING:
            return locked
        locked.status = WebhookDelivery.Status.PENDING
        locked.next_attempt_at = now
        locked.retry_until = now + _retry_window()
        locked.published_at = now
        locked.save()
        _publish_on_commit([locked.pk])
    return locked


def webhook_deliveries_due(*, limit: int, republish_after_seconds: float) -> list[int]:
    """Deliveries to (re)publish: pending ones whose time has come and whose message, if any,
    is older than ``republish_after_seconds`` (lost), and sends whose worker died (lease
    expired, taken back without counting an attempt). Marks them published."""
    now = timezone.now()
    with transaction.atomic():
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.SENDING, lease_expires_at__lt=now
        ).update(status=WebhookDelivery.Status.PENDING, lease_expires_at=None, published_at=None)
        # Past their window (e.g. taken back from dead workers again and again): given up. A
        # disabled endpoint's deliveries wait instead; enabling it opens a new window.
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, retry_until__lt=now, endpoint__enabled=True
        ).update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None, updated_at=now)
        due = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(
                status=WebhookDelivery.Status.PENDING,
                next_attempt_at__lte=now,
                endpoint__enabled=True,
            )
            .filter(
                Q(published_at__isnull=True)
                | Q(published_at__lt=now - timedelta(seconds=republish_after_seconds))
            )
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        if due:
            WebhookDelivery.objects.filter(pk__in=due).update(published_at=now)
    return due


def webhook_delivery_mark_published(*, delivery_id: int, at: datetime) -> None:
    WebhookDelivery.objects.filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING).update(
        published_at=at
    )


def webhook_events_purge(*, older_than_days: int) -> int:
    """Delete events (with their deliveries and log) older than the retention, unless a
    delivery of theirs is still pending or being sent."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    open_deliveries = WebhookDelivery.objects.filter(
        status__in=[WebhookDelivery.Status.PENDING, WebhookDelivery.Status.SENDING]
    ).values("event_id")
    deleted, _ = (
        WebhookEvent.objects.filter(created_at__lt=cutoff).exclude(pk__in=open_deliveries).delete()
    )
    return deleted


def webhook_secrets_reencrypt() -> int:
    """Re-encrypt every endpoint's signing secrets with the newest AUTOPAY_KEY_ENCRYPTION_KEYS
    key (``autopay_rotate_wallet_keys`` runs it after the wallets); returns how many endpoints
    changed. Raises KeyCustodyError for a secret no configured key decrypts."""
    changed = 0
    for endpoint_id in WebhookEndpoint.objects.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint_id)
            updates = {}
            for field in ("encrypted_secret", "previous_encrypted_secret"):
                token = getattr(endpoint, field)
                rotated = reencrypt_private_key(token) if token else None
                if rotated is not None:
                    updates[field] = rotated
            if updates:
                WebhookEndpoint.objects.filter(pk=endpoint_id).update(**updates)
                changed += 1
    return changed
