"""Operator views of webhook endpoints, events and the delivery log (with resend)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin_log import admin_log_action
from core.errors import ServiceError
from subscriptions.webhooks import services
from subscriptions.webhooks.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "url",
        "owner",
        "enabled",
        "failing_since",
        "disabled_reason",
        "created_at",
    )
    list_filter = ("enabled", ("failing_since", admin.EmptyFieldListFilter))
    search_fields = ("url", "description", "owner__username")
    # The secret is never shown, even encrypted; it is set and rotated by the services.
    fields = (
        "owner",
        "url",
        "description",
        "event_types",
        "enabled",
        "failing_since",
        "disabled_at",
        "disabled_reason",
        "secret_rotated_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = (
        "owner",
        "url",
        "failing_since",
        "disabled_at",
        "disabled_reason",
        "secret_rotated_at",
        "created_at",
        "updated_at",
    )
    list_select_related = ("owner",)
    actions = ("enable_selected", "disable_selected")

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Created through the API: the secret is shown once, to its owner.
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        services.webhook_endpoint_update(endpoint=obj, **changes)

    @admin.action(description="Enable selected endpoints (send their kept events)")
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            services.webhook_endpoint_update(endpoint=endpoint, enabled=True)
        admin_log_action(user=request.user, objects=queryset, message="Enabled.")
        self.message_user(request, f"{queryset.count()} endpoint(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected endpoints")
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            services.webhook_endpoint_update(endpoint=endpoint, enabled=False)
        admin_log_action(user=request.user, objects=queryset, message="Disabled.")
        self.message_user(request, f"{queryset.count()} endpoint(s) disabled.", messages.SUCCESS)


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    max_num = 0
    can_delete = False
    fields = (
        "attempted_at",
        "status_code",
        "succeeded",
        "duration_ms",
        "error",
        "response_excerpt",
    )
    readonly_fields = fields


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "endpoint",
        "event_type",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "created_at",
    )
    list_filter = ("status", "event__type", "endpoint__enabled")
    search_fields = ("=event__id", "endpoint__url", "endpoint__owner__username", "last_error")
    list_select_related = ("event", "endpoint")
    raw_id_fields = ("event", "endpoint")
    date_hierarchy = "created_at"
    inlines = (WebhookAttemptInline,)
    actions = ("resend_selected",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in WebhookDelivery._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="Event")
    def event_type(self, delivery: WebhookDelivery) -> str:
        return str(delivery.event.type)

    @admin.action(description="Resend selected deliveries")
    def resend_selected(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        resent = 0
        for delivery in queryset.order_by("pk"):
            try:
                services.webhook_delivery_resend(delivery=delivery)
                resent += 1
                admin_log_action(user=request.user, objects=[delivery], message="Resent.")
            except ServiceError as exc:
                self.message_user(request, f"#{delivery.pk}: {exc.message}", messages.WARNING)
        self.message_user(request, f"{resent} delivery(ies) queued again.", messages.SUCCESS)


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):
    list_display = ("public_id", "type", "owner", "created_at")
    list_filter = ("type",)
    search_fields = ("=id", "owner__username")
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in WebhookEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
