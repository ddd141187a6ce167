"""Operator views of subscriptions and payments."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin_filters import RangeListFilter
from core.admin_log import admin_log_action
from core.export import queryset_csv
from subscriptions import services, validators
from subscriptions.exports import PAYMENT_CSV_COLUMNS
from subscriptions.models import (
    PayerWallet,
    Payment,
    PresignedAuthorization,
    Subscription,
    token_amount_text,
)

# What an operator may change on an existing subscription: what the API may change. The
# billing schedule (anchor, interval) and the token stay as they are, because changing them
# under existing payments would move period boundaries (a period charged twice). The status
# is read-only everywhere: it changes through the pause/resume actions, i.e. the services
# (a status edited by hand would skip their rules, e.g. a resume that charges paused periods).
FIXED_AFTER_CREATION = (
    "owner",
    "token_address",
    "token_decimals",
    "network",
    "interval_unit",
    "interval_count",
    "billing_anchor",
)


class TokenAmountMixin:
    """``token_amount``: the amount with the token's own decimals (the column keeps 18)."""

    @admin.display(description="Amount", ordering="amount")
    def token_amount(self, row: Subscription | Payment) -> str:
        return token_amount_text(row.amount, row.token_decimals)


class PaymentInline(TokenAmountMixin, admin.TabularInline):
    model = Payment
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "period_start",
        "token_amount",
        "status",
        "transaction_hash",
        "error_code",
        "completed_at",
    )
    readonly_fields = fields
    ordering = ("-period_start",)
    max_num = 0


class SubscriptionAdminForm(forms.ModelForm):
    """The API's validation, so that an operator cannot store what the API would refuse."""

    class Meta:
        model = Subscription
        fields = (
            "owner",
            "service_name",
            "wallet",
            "recipient_address",
            "amount",
            "token_address",
            "token_decimals",
            "network",
            "interval_unit",
            "interval_count",
            "billing_anchor",
            "auto_pay_enabled",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        instance = self.instance
        if instance.pk and instance.amount is not None and "amount" not in self.data:
            # Shown with the token's decimals, not the 18 places the column stores.
            self.initial["amount"] = token_amount_text(instance.amount, instance.token_decimals)

    def _validated(self, field: str, validator: Any) -> Any:
        value = self.cleaned_data.get(field)
        if value:
            validator(value)
        return value

    def clean_recipient_address(self) -> Any:
        return self._validated("recipient_address", validators.validate_checksum_address)

    def clean_token_address(self) -> Any:
        return self._validated("token_address", validators.validate_checksum_address)

    def clean_network(self) -> Any:
        return self._validated("network", validators.validate_network)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        amount = cleaned.get("amount")
        decimals = cleaned.get("token_decimals", self.instance.token_decimals)
        if amount is not None and decimals is not None:
            try:
                validators.validate_amount(amount, decimals=decimals)
            except ValidationError as exc:
                self.add_error("amount", exc)
        # Whose money: the payer is always the wallet's address, and the wallet must be the
        # subscription owner's (staff cannot attach one user's wallet to another's
        # subscription). The billing anchor is the operator's to set freely.
        wallet = cleaned.get("wallet", getattr(self.instance, "wallet", None))
        owner = cleaned.get("owner") or getattr(self.instance, "owner", None)
        if self.instance.is_presigned:
            # Pre-signed (created through the API): the payer signs; no wallet is attached.
            if wallet is not None:
                self.add_error("wallet", "A pre-signed subscription has no server-held wallet.")
        elif wallet is None:
            self.add_error("wallet", "Attach one of the owner's wallets.")
        elif owner is not None and wallet.owner_id != owner.pk:
            self.add_error("wallet", "The wallet belongs to another user.")
        else:
            self.instance.payer_address = wallet.address
        payer = (
            self.instance.payer_address
            if self.instance.is_presigned
            else (wallet.address if wallet is not None else None)
        )
        network = cleaned.get("network", self.instance.network)
        token = cleaned.get("token_address", self.instance.token_address)
        if network and token and "token_address" in self.fields:
            try:
                validators.validate_token(token, network=network)
            except ValidationError as exc:
                self.add_error("token_address", exc)
        recipient = cleaned.get("recipient_address")
        if recipient:
            try:
                validators.validate_recipient(
                    recipient,
                    payer=payer,
                    token_address=token or None,
                )
            except ValidationError as exc:
                self.add_error("recipient_address", exc)
        return cleaned


@admin.register(Subscription)
class SubscriptionAdmin(TokenAmountMixin, admin.ModelAdmin):
    form = SubscriptionAdminForm
    list_display = (
        "id",
        "service_name",
        "owner",
        "token_amount",
        "interval_count",
        "interval_unit",
        "status",
        "auto_pay_enabled",
        "next_payment_due_at",
        "dunning_attempts",
    )
    list_filter = (
        "status",
        "mode",
        "auto_pay_enabled",
        "interval_unit",
        "network",
        ("amount", RangeListFilter),
        ("created_at", admin.DateFieldListFilter),
        ("next_payment_due_at", RangeListFilter),
    )
    search_fields = ("=id", "service_name", "payer_address", "recipient_address", "owner__username")
    readonly_fields = (
        "mode",
        "payer_address",
        "status",
        "status_reason",
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
    actions = ("pause_selected", "resume_selected", "cancel_selected")
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return self.readonly_fields
        return (*FIXED_AFTER_CREATION, *self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            # The cursors services.subscription_create sets: the first period starts at the
            # anchor (they are read-only in the form, so nothing else would set them).
            obj.next_payment_due_at = obj.billing_anchor
            obj.next_period_index = 0
            obj.next_period_due_at = obj.billing_anchor
        super().save_model(request, obj, form, change)

    @admin.action(description="Pause selected subscriptions")
    def pause_selected(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._apply(request, queryset, services.subscription_pause, "paused")

    @admin.action(description="Resume selected subscriptions")
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._apply(request, queryset, services.subscription_resume, "resumed")

    @admin.action(description="Cancel selected subscriptions")
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        self._apply(request, queryset, services.subscription_cancel, "canceled")

    def _apply(
        self, request: HttpRequest, queryset: QuerySet[Subscription], service: Any, verb: str
    ) -> None:
        done = 0
        for subscription in queryset.order_by("pk"):
            try:
                service(subscription=subscription)
                done += 1
                admin_log_action(
                    user=request.user, objects=[subscription], message=f"{verb.capitalize()}."
                )
            except services.SubscriptionStateError as exc:
                self.message_user(request, f"#{subscription.pk}: {exc}", messages.WARNING)
        self.message_user(request, f"{done} subscription(s) {verb}.", messages.SUCCESS)


@admin.register(Payment)
class PaymentAdmin(TokenAmountMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "subscription",
        "period_start",
        "token_amount",
        "status",
        "error_code",
        "short_transaction_hash",
        "completed_at",
    )
    list_filter = (
        "status",
        "error_code",
        "network",
        ("amount", RangeListFilter),
        ("period_start", RangeListFilter),
        ("completed_at", admin.DateFieldListFilter),
    )
    search_fields = (
        "=id",
        "=subscription__id",
        "subscription__service_name",
        "transaction_hash",
        "payer_address",
        "recipient_address",
        "authorization_nonce",
    )
    list_select_related = ("subscription",)
    date_hierarchy = "period_start"
    actions = ("export_csv",)

    @admin.action(description="Export selected payments as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Payment]) -> Any:
        """Streamed, exact decimal amounts; "select all" exports every filtered row."""
        return queryset_csv(
            queryset.order_by("-period_start", "-id"), PAYMENT_CSV_COLUMNS, name="payments"
        )

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [
            "token_amount" if field.name == "amount" else field.name
            for field in Payment._meta.fields
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.get_fields(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Payments are records of money movement: operators read them, services write them.
        # The page is read-only (no Save button).
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Transaction")
    def short_transaction_hash(self, payment: Payment) -> str:
        value = payment.transaction_hash
        return f"{value[:10]}…{value[-6:]}" if value else ""


# Payer wallets: address and owner only; the key is never shown.
@admin.register(PayerWallet)
class PayerWalletAdmin(admin.ModelAdmin):
    list_display = ("id", "address", "label", "owner", "created_at")
    search_fields = ("address", "label", "owner__username")
    fields = ("owner", "label", "address", "created_at")
    readonly_fields = ("address", "created_at")
    raw_id_fields = ("owner",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Wallets are generated by the service (API or command) so that a key is never typed.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The encrypted key is the only way to the wallet's funds: deleting it loses them.
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("owner", "address", "created_at") if obj else self.readonly_fields


# Pre-signed authorizations uploaded by payers: read-only, never the signatures.
@admin.register(PresignedAuthorization)
class PresignedAuthorizationAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "subscription",
        "period_index",
        "period_start",
        "value_atomic",
        "valid_before",
        "canceled_at",
    )
    list_filter = ("canceled_at",)
    search_fields = ("=subscription__id", "payer_address", "nonce")
    fields = (
        "subscription",
        "period_index",
        "period_start",
        "payer_address",
        "recipient_address",
        "token_address",
        "chain_id",
        "value_atomic",
        "valid_after",
        "valid_before",
        "nonce",
        "canceled_at",
        "created_at",
    )
    readonly_fields = fields
    list_select_related = ("subscription",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
