"""Operator views of subscriptions and payments."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from core.admin_filters import RangeListFilter
from core.admin_log import admin_log_action
from core.console import (
    NAME_SHOWN,
    address_link,
    age_cell,
    atomic_money_text,
    date_cell,
    money_text,
    short_link,
    status_badge,
    time_text,
    time_with_age,
    transaction_link,
    unix_time_text,
)
from core.export import queryset_csv
from subscriptions import selectors, services, validators
from subscriptions.exports import PAYMENT_CSV_COLUMNS
from subscriptions.models import (
    PayerWallet,
    Payment,
    PresignedAuthorization,
    Subscription,
    token_amount_text,
)

# The cursors of a subscription, explained where they are shown (they are easy to confuse).
NEXT_PAYMENT_HELP = (
    "Start of the earliest period not paid yet (a failed or pending period keeps it there)."
)
NEXT_PERIOD_HELP = (
    "Start of the next period the scan will open a payment for (the billing cursor); equal to "
    "the one above when every period so far is paid."
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
        return money_text(row.amount, decimals=row.token_decimals, network=row.network)

    @admin.display(description="Status", ordering="status")
    def status_shown(self, row: Subscription | Payment) -> SafeString:
        return status_badge(row.status, row.get_status_display())


class PaymentInline(TokenAmountMixin, admin.TabularInline):
    model = Payment
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "period_start",
        "token_amount",
        "status_shown",
        "transaction",
        "error_code",
        "completed_at",
    )
    readonly_fields = fields
    ordering = ("-period_start",)
    max_num = 0

    @admin.display(description="Transaction")
    def transaction(self, payment: Payment) -> SafeString:
        return transaction_link(payment.network, payment.transaction_hash)


class SubscriptionAdminForm(forms.ModelForm):
    """The API's validation, so that an operator cannot store what the API would refuse; a new
    subscription is created by ``services.subscription_create`` (as the API does), in any mode:
    custodial (a wallet of the owner's signs), pre-signed (``payer_address`` signs each period
    ahead through the API; no key here) or either of them paid through a service's own x402
    endpoint (``resource_url``)."""

    class Meta:
        model = Subscription
        fields = (
            "owner",
            "service_name",
            "mode",
            "wallet",
            "payer_address",
            "recipient_address",
            "amount",
            "token_address",
            "token_decimals",
            "network",
            "interval_unit",
            "interval_count",
            "billing_anchor",
            "resource_url",
            "resource_method",
            "auto_pay_enabled",
        )
        help_texts = {
            "payer_address": "Pre-signed only: the address that signs each period (custodial: "
            "the wallet's address, set for you).",
            "resource_url": "Optional: the service's own x402 endpoint the worker pays through "
            "(its host must be in AUTOPAY_RESOURCE_ALLOWED_HOSTS).",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        instance = self.instance
        if instance.pk and instance.amount is not None and "amount" not in self.data:
            # Shown with the token's decimals, not the 18 places the column stores.
            self.initial["amount"] = token_amount_text(instance.amount, instance.token_decimals)
        # Fields with a default that a form posted without them keeps (custodial, GET).
        for name in ("payer_address", "mode", "resource_method"):
            if name in self.fields:
                self.fields[name].required = False

    def clean_mode(self) -> Any:
        return self.cleaned_data.get("mode") or self.instance.mode

    def clean_resource_method(self) -> Any:
        return self.cleaned_data.get("resource_method") or self.instance.resource_method

    def _validated(self, field: str, validator: Any) -> Any:
        value = self.cleaned_data.get(field)
        if value:
            validator(value)
        return value

    def clean_recipient_address(self) -> Any:
        return self._validated("recipient_address", validators.validate_checksum_address)

    def clean_payer_address(self) -> Any:
        return self._validated("payer_address", validators.validate_checksum_address)

    def clean_token_address(self) -> Any:
        return self._validated("token_address", validators.validate_checksum_address)

    def clean_network(self) -> Any:
        return self._validated("network", validators.validate_network)

    def clean_resource_url(self) -> Any:
        return self._validated("resource_url", validators.validate_resource_url)

    def _payer(self, cleaned: dict[str, Any]) -> str | None:
        """Whose money: a custodial subscription's payer is always its wallet's address, and
        the wallet must be the subscription owner's (staff cannot attach one user's wallet to
        another's subscription); a pre-signed one has no wallet and names its signer."""
        wallet = cleaned.get("wallet", getattr(self.instance, "wallet", None))
        owner = cleaned.get("owner") or getattr(self.instance, "owner", None)
        mode = cleaned.get("mode") or self.instance.mode
        if mode == Subscription.Mode.PRESIGNED:
            if wallet is not None:
                self.add_error("wallet", "A pre-signed subscription has no server-held wallet.")
            payer = cleaned.get("payer_address") or self.instance.payer_address
            if not payer:
                self.add_error("payer_address", "Name the address that will sign each period.")
            return payer or None
        if wallet is None:
            self.add_error("wallet", "Attach one of the owner's wallets.")
            return None
        if owner is not None and wallet.owner_id != owner.pk:
            self.add_error("wallet", "The wallet belongs to another user.")
            return None
        self.instance.payer_address = wallet.address
        cleaned["payer_address"] = wallet.address
        return str(wallet.address)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        amount = cleaned.get("amount")
        decimals = cleaned.get("token_decimals", self.instance.token_decimals)
        if amount is not None and decimals is not None:
            try:
                validators.validate_amount(amount, decimals=decimals)
            except ValidationError as exc:
                self.add_error("amount", exc)
        payer = self._payer(cleaned)
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
    # Fits 1280 px: long names are cut (the whole name on hover), times are days.
    list_display = (
        "id",
        "service",
        "owner",
        "token_amount",
        "every",
        "mode_value",
        "status_shown",
        "auto_pay",
        "next_payment_due_day",
        "dunning",
    )
    list_display_links = ("id", "service")
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
        "status_shown",
        "status_reason",
        "next_payment_due",
        "next_period_due",
        "next_period_index",
        "signed_periods",
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

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_fields(request, obj))
        if obj is not None and obj.is_presigned:
            # Nobody's key is held for it: the payer signs each period ahead.
            fields[fields.index("wallet")] = "signer"
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return self.readonly_fields
        fixed = [*FIXED_AFTER_CREATION, "mode", "payer_address"]
        if obj.is_presigned:
            fixed.append("signer")
        return (*fixed, *self.readonly_fields)

    @admin.display(description="Service", ordering="service_name")
    def service(self, subscription: Subscription) -> SafeString:
        return format_html(
            '<span title="{}">{}</span>',
            subscription.service_name,
            Truncator(subscription.service_name).chars(NAME_SHOWN),
        )

    @admin.display(description="Mode", ordering="mode")
    def mode_value(self, subscription: Subscription) -> str:
        return subscription.mode

    @admin.display(description="Auto-pay", ordering="auto_pay_enabled", boolean=True)
    def auto_pay(self, subscription: Subscription) -> bool:
        return subscription.auto_pay_enabled

    @admin.display(description="Next payment due", ordering="next_payment_due_at")
    def next_payment_due_day(self, subscription: Subscription) -> SafeString:
        return date_cell(subscription.next_payment_due_at)

    @admin.display(description="Dunning", ordering="dunning_attempts")
    def dunning(self, subscription: Subscription) -> int:
        return subscription.dunning_attempts

    @admin.display(description="Every", ordering="interval_unit")
    def every(self, subscription: Subscription) -> str:
        unit = subscription.get_interval_unit_display().lower()
        count = subscription.interval_count
        return f"{count} {unit}s" if count != 1 else unit

    @admin.display(description="Signer")
    def signer(self, subscription: Subscription) -> str:
        return (
            f"{subscription.payer_address} signs each period ahead (pre-signed): "
            "no server-held wallet."
        )

    @admin.display(description="Next payment due at")
    def next_payment_due(self, subscription: Subscription) -> Any:
        return format_html(
            '{}<div class="help">{}</div>',
            time_with_age(subscription.next_payment_due_at),
            NEXT_PAYMENT_HELP,
        )

    @admin.display(description="Next period due at")
    def next_period_due(self, subscription: Subscription) -> Any:
        return format_html(
            '{}<div class="help">{}</div>',
            time_with_age(subscription.next_period_due_at),
            NEXT_PERIOD_HELP,
        )

    @admin.display(description="Signed periods remaining")
    def signed_periods(self, subscription: Subscription) -> str:
        if subscription.pk is None:
            return "-"
        if not subscription.is_presigned:
            return "- (custodial: the server-held wallet signs each period when it is due)"
        return str(selectors.signed_periods_remaining(subscription=subscription))

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # A new subscription is made by the API's service (its checks, its cursors: the first
        # period starts at the anchor); the admin then logs and links the row it made.
        data = form.cleaned_data
        created = services.subscription_create(
            owner=data["owner"],
            service_name=data["service_name"],
            mode=data["mode"],
            wallet=data.get("wallet"),
            payer_address=data.get("payer_address") or obj.payer_address,
            recipient_address=data["recipient_address"],
            amount=data["amount"],
            token_address=data["token_address"],
            token_decimals=data["token_decimals"],
            network=data["network"],
            interval_unit=data["interval_unit"],
            interval_count=data["interval_count"],
            billing_anchor=data["billing_anchor"],
            auto_pay_enabled=data["auto_pay_enabled"],
            resource_url=data.get("resource_url") or "",
            resource_method=data.get("resource_method") or "GET",
        )
        for field in Subscription._meta.concrete_fields:
            setattr(obj, field.attname, getattr(created, field.attname))
        obj._state.adding = False

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
        "subscription_short",
        "period_day",
        "token_amount",
        "status_shown",
        "error_code",
        "transaction",
        "network",
        "age",
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
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "subscription_link",
                    "period",
                    "token_amount",
                    "network",
                    "status_shown",
                    "error_code",
                    "error_message",
                    "payer",
                    "recipient",
                    "wallet",
                    "token_address",
                )
            },
        ),
        (
            "Settlement",
            {
                "fields": (
                    "transaction_full",
                    "block_number",
                    "authorization_nonce",
                    "valid_after_date",
                    "valid_before_date",
                    "search_from_block",
                )
            },
        ),
        ("Timeline (UTC)", {"fields": ("timeline",)}),
    )

    @admin.action(description="Export selected payments as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Payment]) -> Any:
        """Streamed, exact decimal amounts; "select all" exports every filtered row."""
        return queryset_csv(
            queryset.order_by("-period_start", "-id"), PAYMENT_CSV_COLUMNS, name="payments"
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [name for _, options in self.fieldsets for name in options["fields"]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Payments are records of money movement: operators read them, services write them.
        # The page is read-only (no Save button).
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Subscription", ordering="subscription_id")
    def subscription_link(self, payment: Payment) -> SafeString:
        url = reverse("admin:subscriptions_subscription_change", args=[payment.subscription_id])
        return format_html(
            '<a href="{}">#{} {}</a>',
            url,
            payment.subscription_id,
            payment.subscription.service_name,
        )

    @admin.display(description="Subscription", ordering="subscription_id")
    def subscription_short(self, payment: Payment) -> SafeString:
        url = reverse("admin:subscriptions_subscription_change", args=[payment.subscription_id])
        return short_link(url, f"#{payment.subscription_id}", payment.subscription.service_name)

    @admin.display(description="Period", ordering="period_start")
    def period_day(self, payment: Payment) -> SafeString:
        return date_cell(payment.period_start)

    @admin.display(description="Period")
    def period(self, payment: Payment) -> str:
        return (
            f"#{payment.period_index}: {time_text(payment.period_start)} to "
            f"{time_text(payment.period_end)}"
        )

    @admin.display(description="Transaction")
    def transaction(self, payment: Payment) -> SafeString:
        return transaction_link(payment.network, payment.transaction_hash)

    @admin.display(description="Transaction")
    def transaction_full(self, payment: Payment) -> SafeString:
        return transaction_link(payment.network, payment.transaction_hash, short=False)

    @admin.display(description="Payer")
    def payer(self, payment: Payment) -> SafeString:
        return address_link(payment.network, payment.payer_address)

    @admin.display(description="Recipient")
    def recipient(self, payment: Payment) -> SafeString:
        return address_link(payment.network, payment.recipient_address)

    @admin.display(description="Valid after")
    def valid_after_date(self, payment: Payment) -> str:
        return unix_time_text(payment.valid_after)

    @admin.display(description="Valid before")
    def valid_before_date(self, payment: Payment) -> str:
        return unix_time_text(payment.valid_before)

    @admin.display(description="Age", ordering="created_at")
    def age(self, payment: Payment) -> SafeString:
        return age_cell(payment.created_at)

    @admin.display(description="What happened")
    def timeline(self, payment: Payment) -> SafeString:
        """The payment's life in order: created, each job (linked) and how it ended, sent,
        completed, final."""
        events: list[tuple[Any, Any, Any]] = [(payment.created_at, "Created", "")]
        # Jobs through the reverse relation: subscriptions does not import the jobs app.
        for job in payment.jobs.order_by("created_at"):
            url = reverse("admin:jobs_job_change", args=[job.pk])
            events.append(
                (
                    job.created_at,
                    format_html('Job <a href="{}"><code>{}</code></a>', url, str(job.pk)[:8]),
                    format_html(
                        "{} {}, {}/{} attempts {}",
                        job.get_source_display(),
                        status_badge(job.status, job.get_status_display()),
                        job.attempts_made,
                        job.max_attempts,
                        job.error_code,
                    ),
                )
            )
        if payment.submitted_at:
            events.append(
                (
                    payment.submitted_at,
                    "Sent",
                    transaction_link(payment.network, payment.transaction_hash),
                )
            )
        if payment.completed_at:
            events.append((payment.completed_at, "Completed", f"block {payment.block_number}"))
        if payment.finalized_at:
            events.append((payment.finalized_at, "Final (deep enough not to be reorged)", ""))
        events.sort(key=lambda event: event[0])
        return format_html(
            '<table class="autopay-table"><tbody>{}</tbody></table>',
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                ((time_with_age(when), what, detail) for when, what, detail in events),
            ),
        )


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
        "value",
        "valid_before_date",
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
        "value",
        "valid_after_date",
        "valid_before_date",
        "nonce",
        "canceled_at",
        "created_at",
    )
    readonly_fields = fields
    list_select_related = ("subscription",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="Amount", ordering="value_atomic")
    def value(self, authorization: PresignedAuthorization) -> str:
        subscription = authorization.subscription
        return atomic_money_text(
            int(authorization.value_atomic),
            decimals=subscription.token_decimals,
            network=subscription.network,
        )

    @admin.display(description="Valid after", ordering="valid_after")
    def valid_after_date(self, authorization: PresignedAuthorization) -> str:
        return unix_time_text(authorization.valid_after)

    @admin.display(description="Valid before", ordering="valid_before")
    def valid_before_date(self, authorization: PresignedAuthorization) -> str:
        return unix_time_text(authorization.valid_before)
