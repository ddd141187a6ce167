"""Input and output serializers for subscriptions, payments and wallets."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.networks import token_symbol
from subscriptions import periods, selectors, validators
from subscriptions.models import PayerWallet, Payment, Subscription


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

    default_error_messages = {
        "required": "This field is required.",
        # Another user's wallet is answered as a missing one: its existence is not disclosed.
        "does_not_exist": "Wallet {pk_value} not found: give the id of one of your wallets "
        "(GET /api/wallets/).",
        "incorrect_type": "A wallet id (a number) is expected, not {data_type}.",
    }

    def get_queryset(self) -> Any:
        owner = self.context.get("owner")
        if owner is None:
            owner = getattr(self.context.get("request"), "user", None)
        if owner is None or not owner.is_authenticated:
            return PayerWallet.objects.none()
        return PayerWallet.objects.filter(owner=owner)


class SubscriptionInputSerializer(serializers.Serializer):
    """A new subscription.

    Custodial (default): paid from ``wallet``, a server-held wallet of the owner;
    ``payer_address`` is not an input but the wallet's address (an equal value is accepted for
    older clients, any other is refused), so a subscription can never name somebody else's
    wallet by its public address.

    Pre-signed (``mode: presigned``): no wallet; ``payer_address`` is the address that will
    sign each period's authorization in advance. Nothing can be charged until that address
    signs: every uploaded signature must recover to it.
    """

    service_name = serializers.CharField(max_length=200)
    mode = serializers.ChoiceField(
        choices=Subscription.Mode.choices,
        default=Subscription.Mode.CUSTODIAL,
        help_text="custodial: a server-held wallet signs; presigned: the payer signs ahead.",
    )
    wallet = WalletOwnedField(
        required=False,
        help_text="Custodial: id of one of your wallets (POST /api/wallets/); it pays every "
        "period. Not sent for a pre-signed subscription.",
    )
    payer_address = AddressField(
        required=False,
        help_text="Pre-signed: the payer's address (required). Custodial: optional, must "
        "equal the wallet's address.",
    )
    recipient_address = AddressField()
    amount = AmountField()
    token_address = AddressField(
        required=False, help_text="Optional; the network's configured token is the only one."
    )
    network = serializers.CharField(max_length=64, required=False)
    resource_url = serializers.URLField(
        max_length=500,
        required=False,
        allow_blank=True,
        help_text="x402 HTTP: the service's paid endpoint; each period is paid by requesting "
        "it (402, signed payment header, the service settles). Empty: we settle ourselves.",
    )
    resource_method = serializers.ChoiceField(choices=["GET", "POST"], default="GET")
    interval_unit = serializers.ChoiceField(
        choices=Subscription.IntervalUnit.choices, default=Subscription.IntervalUnit.MONTH
    )
    interval_count = serializers.IntegerField(min_value=1, max_value=1000, default=1)
    billing_anchor = serializers.DateTimeField(
        required=False,
        help_text="Start of the first period: from one interval ago to a year ahead (default now).",
    )
    auto_pay_enabled = serializers.BooleanField(default=True)

    def validate_network(self, value: str) -> str:
        return _run(validators.validate_network, value)

    def validate_resource_url(self, value: str) -> str:
        return _run(validators.validate_resource_url, value) if value else value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        wallet = attrs.get("wallet")
        payer = attrs.get("payer_address")
        if attrs["mode"] == Subscription.Mode.PRESIGNED:
            if wallet is not None:
                raise serializers.ValidationError(
                    {"wallet": "A pre-signed subscription has no server-held wallet."}
                )
            if not payer:
                raise serializers.ValidationError(
                    {"payer_address": "Required for a pre-signed subscription: who signs."}
                )
        else:
            if wallet is None:
                raise serializers.ValidationError({"wallet": "This field is required."})
            if payer and payer != wallet.address:
                raise serializers.ValidationError(
                    {
                        "payer_address": "Must equal the wallet's address "
                        "(it is taken from the wallet)."
                    }
                )
            attrs["payer_address"] = payer = wallet.address
        if not periods.interval_is_bounded(
            unit=attrs["interval_unit"], count=attrs["interval_count"]
        ):
            raise serializers.ValidationError(
                {"interval_count": "One billing period may last at most ten years."}
            )
        network = attrs.setdefault("network", settings.CHAIN_NETWORK)
        _run_field("network", validators.validate_network, network)
        if validators.allowed_token(network) is None:
            # The network is the client's choice that fails, not the token it left out.
            usable = ", ".join(sorted(validators.network_tokens())) or "none"
            raise serializers.ValidationError(
                {
                    "network": f"Network {network} has no token configured here; "
                    f"configured networks: {usable}."
                }
            )
        token = attrs.get("token_address") or validators.allowed_token(network)
        _run_field("token_address", validators.validate_token, token, network=network)
        attrs["token_address"] = token
        _run_field(
            "recipient_address",
            validators.validate_recipient,
            attrs["recipient_address"],
            payer=payer,
            token_address=token,
        )
        if "billing_anchor" in attrs:
            _run_field(
                "billing_anchor",
                validators.validate_billing_anchor,
                attrs["billing_anchor"],
                unit=attrs["interval_unit"],
                count=attrs["interval_count"],
                now=timezone.now(),
            )
        return attrs


def _run_field(field: str, validator: Any, value: Any, **kwargs: Any) -> None:
    try:
        validator(value, **kwargs)
    except DjangoValidationError as exc:
        raise serializers.ValidationError({field: exc.messages}) from exc


class SubscriptionUpdateSerializer(serializers.Serializer):
    """What a subscription's owner may change. The payer follows the wallet (one of the
    subscription owner's own, whoever asks); there is no way to name a payer address."""

    service_name = serializers.CharField(max_length=200, required=False)
    recipient_address = AddressField(required=False)
    amount = AmountField(required=False)
    auto_pay_enabled = serializers.BooleanField(required=False)
    wallet = WalletOwnedField(required=False)
    resource_url = serializers.URLField(max_length=500, required=False, allow_blank=True)
    resource_method = serializers.ChoiceField(choices=["GET", "POST"], required=False)

    def validate_resource_url(self, value: str) -> str:
        return _run(validators.validate_resource_url, value) if value else value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("Send at least one field to change.")
        if "payer_address" in self.initial_data:
            raise serializers.ValidationError(
                {"payer_address": "Cannot be changed; attach another of your wallets instead."}
            )
        subscription = self.context.get("subscription")
        if "wallet" in attrs and subscription is not None and subscription.is_presigned:
            raise serializers.ValidationError(
                {"wallet": "A pre-signed subscription has no server-held wallet."}
            )
        if attrs.get("wallet") is not None:
            attrs["payer_address"] = attrs["wallet"].address
        if "recipient_address" in attrs and subscription is not None:
            _run_field(
                "recipient_address",
                validators.validate_recipient,
                attrs["recipient_address"],
                payer=attrs.get("payer_address", subscription.payer_address),
                token_address=subscription.token_address,
            )
        return attrs


AMOUNT_HELP = (
    "Exact decimal string in the token's units (at most token_decimals places); "
    "token_symbol names the token (e.g. 7.5 USDC)."
)


class TokenSymbolMixin(serializers.Serializer):
    """One money format: every amount comes with the symbol of its network's token."""

    token_symbol = serializers.SerializerMethodField(
        help_text="The symbol of the network's token (TOKEN_SYMBOL, or the network's own)."
    )

    def get_token_symbol(self, instance: Any) -> str:
        return token_symbol(instance.network)


class SubscriptionOutputSerializer(TokenSymbolMixin, serializers.ModelSerializer):
    amount = AmountField(read_only=True, help_text=AMOUNT_HELP)
    wallet: serializers.PrimaryKeyRelatedField = serializers.PrimaryKeyRelatedField(read_only=True)
    signed_periods_remaining = serializers.SerializerMethodField(
        help_text="Pre-signed: coming periods whose authorization is uploaded, unexpired and "
        "not canceled (0: the next payment fails with authorization_missing). Custodial: null."
    )

    # An empty string when unset: not a URI, so not typed as one.
    resource_url = serializers.CharField(read_only=True)

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_signed_periods_remaining(self, subscription: Subscription) -> int | None:
        if not subscription.is_presigned:
            return None
        annotated = getattr(subscription, "signed_periods", None)
        if annotated is not None:
            return int(annotated)
        return selectors.signed_periods_remaining(subscription=subscription)

    class Meta:
        model = Subscription
        fields = (
            "id",
            "service_name",
            "mode",
            "payer_address",
            "recipient_address",
            "wallet",
            "signed_periods_remaining",
            "resource_url",
            "resource_method",
            "amount",
            "token_symbol",
            "token_address",
            "token_decimals",
            "network",
            "interval_unit",
            "interval_count",
            "billing_anchor",
            "next_payment_due_at",
            "auto_pay_enabled",
            "status",
            "status_reason",
            "dunning_attempts",
            "dunning_next_retry_at",
            "created_at",
            "updated_at",
            "paused_at",
            "canceled_at",
        )
        read_only_fields = fields


class PaymentOutputSerializer(TokenSymbolMixin, serializers.ModelSerializer):
    amount = AmountField(read_only=True, help_text=AMOUNT_HELP)
    amount_atomic = serializers.SerializerMethodField(
        help_text="The amount in the token's smallest unit (amount * 10^token_decimals)."
    )

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
            "token_symbol",
            "token_decimals",
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
            "finalized_at",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    def get_amount_atomic(self, payment: Payment) -> str:
        return str(payment.amount_atomic)


class WalletInputSerializer(serializers.Serializer):
    label = serializers.CharField(  # type: ignore[assignment]  # DRF pops declared fields
        max_length=100, required=False, allow_blank=True, default=""
    )


class WalletOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = PayerWallet
        # The key (even encrypted) is never part of any answer.
        fields = ("id", "label", "address", "created_at")
        read_only_fields = fields
