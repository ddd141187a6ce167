"""Input and output serializers for subscriptions, payments and wallets."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from autopay.models import PayerWallet
from subscriptions import validators
from subscriptions.models import Payment, Subscription


def _run(validator: Any, value: Any, **kwargs: Any) -> Any:
    try:
        validator(value, **kwargs)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from exc
    return value


class AddressField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 42)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        return _run(validators.validate_checksum_address, value)


class AmountField(serializers.DecimalField):
    """Exact decimal amount, accepted as a string or number, always answered as a string."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 36)
        kwargs.setdefault("decimal_places", 18)
        kwargs.setdefault("coerce_to_string", True)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, float):
            # A JSON float has already lost exactness; accept only its shortest repr.
            data = repr(data)
        try:
            value = Decimal(str(data).strip())
        except (InvalidOperation, ValueError) as exc:
            raise serializers.ValidationError("Amount must be a decimal number.") from exc
        _run(validators.validate_amount, value, decimals=settings.TOKEN_DECIMALS)
        return super().to_internal_value(str(value))

    def to_representation(self, value: Any) -> str:
        return format(Decimal(value).normalize(), "f")


@extend_schema_field(OpenApiTypes.INT)
class WalletOwnedField(serializers.PrimaryKeyRelatedField):
    """A wallet of the subscription's owner (context ``owner``, else the requesting user).

    Staff too: a subscription may only sign with its own owner's wallet, never another's.
    """

    def get_queryset(self) -> Any:
        owner = self.context.get("owner")
        if owner is None:
            owner = getattr(self.context.get("request"), "user", None)
        if owner is None or not owner.is_authenticated:
            return PayerWallet.objects.none()
        return PayerWallet.objects.filter(owner=owner)


class SubscriptionInputSerializer(serializers.Serializer):
    service_name = serializers.CharField(max_length=200)
    payer_address = AddressField(required=False)
    recipient_address = AddressField()
    amount = AmountField()
    token_address = AddressField(required=False)
    network = serializers.CharField(max_length=64, required=False)
    interval_unit = serializers.ChoiceField(
        choices=Subscription.IntervalUnit.choices, default=Subscription.IntervalUnit.MONTH
    )
    interval_count = serializers.IntegerField(min_value=1, max_value=1000, default=1)
    billing_anchor = serializers.DateTimeField(required=False)
    auto_pay_enabled = serializers.BooleanField(default=True)
    wallet = WalletOwnedField(required=False, allow_null=True)

    def validate_network(self, value: str) -> str:
        return _run(validators.validate_network, value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        partial = self.partial
        wallet = attrs.get("wallet")
        if wallet is not None:
            payer = attrs.get("payer_address")
            if payer and payer != wallet.address:
                raise serializers.ValidationError(
                    {"payer_address": "Must equal the attached wallet's address."}
                )
            attrs["payer_address"] = wallet.address
        if not partial:
            if not attrs.get("payer_address"):
                raise serializers.ValidationError(
                    {"payer_address": "This field is required unless a wallet is attached."}
                )
            if not attrs.get("token_address"):
                if not settings.TOKEN_ADDRESS:
                    raise serializers.ValidationError(
                        {"token_address": "This field is required (no default token is set)."}
                    )
                attrs["token_address"] = settings.TOKEN_ADDRESS
            attrs.setdefault("network", settings.CHAIN_NETWORK)
            _run_field("network", validators.validate_network, attrs["network"])
        return attrs


def _run_field(field: str, validator: Any, value: Any) -> None:
    try:
        validator(value)
    except DjangoValidationError as exc:
        raise serializers.ValidationError({field: exc.messages}) from exc


class SubscriptionUpdateSerializer(serializers.Serializer):
    service_name = serializers.CharField(max_length=200, required=False)
    recipient_address = AddressField(required=False)
    amount = AmountField(required=False)
    auto_pay_enabled = serializers.BooleanField(required=False)
    wallet = WalletOwnedField(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("Send at least one field to change.")
        if attrs.get("wallet") is not None:
            attrs["payer_address"] = attrs["wallet"].address
        return attrs


class SubscriptionOutputSerializer(serializers.ModelSerializer):
    amount = AmountField(read_only=True)
    wallet: serializers.PrimaryKeyRelatedField = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Subscription
        fields = (
            "id",
            "service_name",
            "payer_address",
            "recipient_address",
            "wallet",
            "amount",
            "token_address",
            "token_decimals",
            "network",
            "interval_unit",
            "interval_count",
            "billing_anchor",
            "next_payment_due_at",
            "auto_pay_enabled",
            "status",
            "dunning_attempts",
            "dunning_next_retry_at",
            "created_at",
            "updated_at",
            "paused_at",
            "canceled_at",
        )
        read_only_fields = fields


class PaymentOutputSerializer(serializers.ModelSerializer):
    amount = AmountField(read_only=True)
    amount_atomic = serializers.SerializerMethodField()

    class Meta:
        model = Payment
        fields = (
            "id",
            "subscription",
            "period_index",
            "period_start",
            "period_end",
            "amount",
            "amount_atomic",
            "payer_address",
            "recipient_address",
            "token_address",
            "network",
            "status",
            "authorization_nonce",
            "transaction_hash",
            "block_number",
            "error_code",
            "error_message",
            "submitted_at",
            "completed_at",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    def get_amount_atomic(self, payment: Payment) -> str:
        return str(payment.amount_atomic)
