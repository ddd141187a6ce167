"""Webhook endpoints, the events recorded for their owners, and every delivery attempt."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class EventType(models.TextChoices):
    PAYMENT_SUCCEEDED = "payment.succeeded", "Payment succeeded"
    PAYMENT_FAILED = "payment.failed", "Payment failed"
    PAYMENT_WAIVED = "payment.waived", "Payment waived"
    SUBSCRIPTION_PAST_DUE = "subscription.past_due", "Subscription past due"
    SUBSCRIPTION_UNPAID = "subscription.unpaid", "Subscription unpaid"
    SUBSCRIPTION_CANCELED = "subscription.canceled", "Subscription canceled"
    JOB_FAILED = "job.failed", "Job failed"
    # Operator events: sent to staff users' endpoints only.
    RELAYER_UNFUNDED = "relayer.unfunded", "Relayer out of the pool (cannot pay for gas)"


OPERATOR_EVENT_TYPES = frozenset({EventType.RELAYER_UNFUNDED})


class WebhookEndpoint(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=500)
    description = models.CharField(max_length=200, blank=True, default="")
    # The event types sent to this endpoint; empty = every type.
    event_types = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    # "whsec_..." signing secrets, Fernet-encrypted like payer keys; the previous one still
    # signs (a second signature) until previous_secret_expires_at, so receivers can rotate.
    encrypted_secret = models.TextField(editable=False)
    previous_encrypted_secret = models.TextField(editable=False, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)
    # Set by the first failed attempt after a success; the endpoint is disabled when it has
    # failed for WEBHOOK_DISABLE_AFTER_HOURS.
    failing_since = models.DateTimeField(null=True, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.url} ({'enabled' if self.enabled else 'disabled'})"

    def __repr__(self) -> str:
        # Never the secret, even encrypted.
        return f"<WebhookEndpoint {self.pk} {self.url}>"

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class WebhookEvent(models.Model):
    """Something that happened to one user's objects; immutable once written."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    type = models.CharField(max_length=40, choices=EventType.choices)
    # The object in the API's own shape, as it was when the event happened.
    data = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=["owner", "-created_at"], name="webhook_event_owner_idx")]

    def __str__(self) -> str:
        return f"{self.public_id} {self.type}"

    @property
    def public_id(self) -> str:
        """The ``webhook-id`` header and the payload's ``id``: the same on every attempt."""
        return f"evt_{self.id.hex}"


class WebhookDelivery(models.Model):
    """One event to one endpoint: retried with backoff until it succeeds or its time is up."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed (gave up)"

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Retries stop after this (WEBHOOK_RETRY_WINDOW_HOURS after creation, a resend or the
    # endpoint's re-enabling).
    retry_until = models.DateTimeField()
    # When a message for it was last put on the queue (the dispatcher repeats lost ones).
    published_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event"], name="webhook_one_delivery")
        ]
        indexes = [
            models.Index(fields=["endpoint", "-created_at"], name="webhook_delivery_log_idx"),
            # The dispatcher's query: due deliveries, and sends whose worker died.
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_delivery_due_idx",
                condition=Q(status="pending"),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="webhook_delivery_lease_idx",
                condition=Q(status="sending"),
            ),
        ]

    def __str__(self) -> str:
        return f"Delivery {self.pk} of {self.event_id} ({self.status})"

    @property
    def owner_id(self) -> int:
        """Whose delivery this is (core.permissions.object_owner_id)."""
        return int(self.endpoint.owner_id)


class WebhookAttempt(models.Model):
    """One HTTP request of a delivery: the delivery log."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="log")
    attempted_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    error = models.CharField(max_length=500, blank=True, default="")
    # The start of the receiver's answer, for debugging.
    response_excerpt = models.CharField(max_length=1000, blank=True, default="")

    class Meta:
        ordering = ("-attempted_at", "-id")

    def __str__(self) -> str:
        return f"Attempt {self.pk} ({self.status_code or self.error})"
