"""Operator views of subscriptions and payments."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from subscriptions import services
from subscriptions.models import Payment, Subscription


class PaymentInline(admin.TabularInline):
    model = Payment
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("period_start", "amount", "status", "transaction_hash", "error_code", "completed_at")
    readonly_fields = fields
    ordering = ("-period_start",)
    max_num = 0


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "service_name",
        "owner",
        "amount",
        "interval_count",
        "interval_unit",
        "status",
        "auto_pay_enabled",
        "next_payment_due_at",
        "dunning_attempts",
    )
    list_filter = ("status", "auto_pay_enabled", "interval_unit", "network")
    search_fields = ("=id", "service_name", "payer_address", "recipient_address", "owner__username")
    readonly_fields = (
        "next_payment_due_at",
        "next_period_index",
        "next_period_due_at",
        "dunning_attempts",
        "dunning_next_retry_at",
        "created_at",
        "updated_at",
        "paused_at",
        "canceled_at",
    )
    raw_id_fields = ("owner", "wallet")
    list_select_related = ("owner",)
    inlines = (PaymentInline,)
    actions = ("pause_selected", "resume_selected")
    date_hierarchy = "created_at"

    @admin.action(description="Pause selected subscriptions")
    def pause_selected(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._apply(request, queryset, services.subscription_pause, "paused")

    @admin.action(description="Resume selected subscriptions")
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._apply(request, queryset, services.subscription_resume, "resumed")

    def _apply(
        self, request: HttpRequest, queryset: QuerySet[Subscription], service: Any, verb: str
    ) -> None:
        done = 0
        for subscription in queryset.order_by("pk"):
            try:
                service(subscription=subscription)
                done += 1
            except services.SubscriptionStateError as exc:
                self.message_user(request, f"#{subscription.pk}: {exc}", messages.WARNING)
        self.message_user(request, f"{done} subscription(s) {verb}.", messages.SUCCESS)


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "subscription",
        "period_start",
        "amount",
        "status",
        "error_code",
        "short_transaction_hash",
        "completed_at",
    )
    list_filter = ("status", "error_code", "network")
    search_fields = (
        "=id",
        "=subscription__id",
        "transaction_hash",
        "payer_address",
        "authorization_nonce",
    )
    list_select_related = ("subscription",)
    date_hierarchy = "period_start"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Payments are records of money movement: operators read them, services write them.
        return [field.name for field in Payment._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Transaction")
    def short_transaction_hash(self, payment: Payment) -> str:
        value = payment.transaction_hash
        return f"{value[:10]}…{value[-6:]}" if value else ""
