"""Pre-signed subscriptions: the typed data the payer signs, and uploading the signatures.

GET  /api/subscriptions/{id}/authorizations/unsigned?count=K   what to sign for the next K periods
GET  /api/subscriptions/{id}/authorizations                    what is stored (no signatures)
POST /api/subscriptions/{id}/authorizations                    upload signatures (owner only)
"""

from __future__ import annotations

import time
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from autopay.authorizations import (
    MAX_PERIODS_PER_REQUEST,
    UploadedAuthorization,
    authorization_unsigned_list,
    authorization_upload,
    typed_data,
)
from core.api import ApiErrorSerializer
from subscriptions import selectors
from subscriptions.models import PresignedAuthorization, Subscription


class UnsignedQuerySerializer(serializers.Serializer):
    count = serializers.IntegerField(min_value=1, max_value=MAX_PERIODS_PER_REQUEST, default=1)


class TypedDataField(serializers.DictField):
    """EIP-712 typed data (eth_signTypedData_v4): types, primaryType, domain, message."""


class UnsignedPeriodSerializer(serializers.Serializer):
    period_index = serializers.IntegerField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    signed = serializers.BooleanField(
        help_text="A matching signature for this period is already stored."
    )
    typed_data = TypedDataField(help_text="Sign this as is (eth_signTypedData_v4).")


class UnsignedAnswerSerializer(serializers.Serializer):
    subscription = serializers.IntegerField()
    payer_address = serializers.CharField()
    signed_periods_remaining = serializers.IntegerField()
    periods = UnsignedPeriodSerializer(many=True)


class UploadItemSerializer(serializers.Serializer):
    # The column's range (PositiveIntegerField).
    period_index = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    signature = serializers.RegexField(
        r"^0x[0-9a-fA-F]{130}$", help_text="65-byte signature (r, s, v), 0x-hex."
    )
    typed_data = TypedDataField(
        required=False, help_text="The typed data that was signed, as returned by .../unsigned."
    )
    message = serializers.DictField(
        required=False, help_text="Or only its message (from, to, value, validAfter, ...)."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        data = attrs.get("typed_data")
        if data is not None:
            if data.get("primaryType") != "TransferWithAuthorization":
                raise serializers.ValidationError(
                    {"typed_data": "primaryType must be TransferWithAuthorization."}
                )
            if not isinstance(data.get("message"), dict) or not isinstance(
                data.get("domain"), dict
            ):
                raise serializers.ValidationError(
                    {"typed_data": "domain and message are required."}
                )
        elif attrs.get("message") is None:
            raise serializers.ValidationError("Send typed_data (or message) with the signature.")
        return attrs


class UploadSerializer(serializers.Serializer):
    authorizations = serializers.ListField(
        child=UploadItemSerializer(), min_length=1, max_length=MAX_PERIODS_PER_REQUEST
    )


class StoredAuthorizationSerializer(serializers.ModelSerializer):
    value_atomic = serializers.SerializerMethodField()
    state = serializers.SerializerMethodField(
        help_text="usable, expired (window ended) or canceled (on chain by the payer)."
    )

    class Meta:
        model = PresignedAuthorization
        # The signature itself is not shown: it is spent on chain, nowhere else.
        fields = (
            "period_index",
            "period_start",
            "payer_address",
            "recipient_address",
            "value_atomic",
            "valid_after",
            "valid_before",
            "nonce",
            "state",
            "canceled_at",
            "created_at",
        )
        read_only_fields = fields

    def get_value_atomic(self, row: PresignedAuthorization) -> str:
        return str(int(row.value_atomic))

    def get_state(self, row: PresignedAuthorization) -> str:
        if row.canceled_at is not None:
            return "canceled"
        if row.valid_before <= int(time.time()) + row.MINIMUM_REMAINING_SECONDS:
            return "expired"
        return "usable"


class StoredAnswerSerializer(serializers.Serializer):
    subscription = serializers.IntegerField()
    signed_periods_remaining = serializers.IntegerField()
    authorizations = StoredAuthorizationSerializer(many=True)


class _SubscriptionScoped(GenericAPIView):
    lookup_field = "pk"

    def get_queryset(self) -> QuerySet[Subscription]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return Subscription.objects.none()
        return selectors.subscription_list(user=self.request.user)


class UnsignedAuthorizationsView(_SubscriptionScoped):
    """GET /api/subscriptions/{id}/authorizations/unsigned?count=K"""

    @extend_schema(
        operation_id="subscriptions_authorizations_unsigned",
        parameters=[UnsignedQuerySerializer],
        responses={200: UnsignedAnswerSerializer, 400: ApiErrorSerializer},
    )
    def get(self, request: Request, pk: Any = None) -> Response:
        """EIP-712 typed data of the next K periods of a pre-signed subscription: derived
        nonces, each period's window (from 10 minutes before its start to the next period's
        start) and the exact amount. The payer signs each one; upload the signatures with
        POST .../authorizations."""
        subscription = self.get_object()
        query = UnsignedQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        periods = authorization_unsigned_list(
            subscription=subscription, count=query.validated_data["count"]
        )
        return Response(
            {
                "subscription": subscription.pk,
                "payer_address": subscription.payer_address,
                "signed_periods_remaining": selectors.signed_periods_remaining(
                    subscription=subscription
                ),
                "periods": [
                    {
                        "period_index": period.period_index,
                        "period_start": period.period_start,
                        "period_end": period.period_end,
                        "signed": period.signed,
                        "typed_data": typed_data(period.authorization),
                    }
                    for period in periods
                ],
            }
        )


class AuthorizationsView(_SubscriptionScoped):
    """GET/POST /api/subscriptions/{id}/authorizations"""

    def _stored(self, subscription: Subscription, http_status: int) -> Response:
        rows = PresignedAuthorization.objects.filter(
            subscription=subscription, period_start__gte=subscription.next_payment_due_at
        ).order_by("period_start")
        return Response(
            {
                "subscription": subscription.pk,
                "signed_periods_remaining": selectors.signed_periods_remaining(
                    subscription=subscription
                ),
                "authorizations": StoredAuthorizationSerializer(rows, many=True).data,
            },
            status=http_status,
        )

    @extend_schema(
        operation_id="subscriptions_authorizations_list",
        responses={200: StoredAnswerSerializer},
    )
    def get(self, request: Request, pk: Any = None) -> Response:
        """The stored authorizations of the coming periods (signatures are not shown)."""
        return self._stored(self.get_object(), status.HTTP_200_OK)

    @extend_schema(
        operation_id="subscriptions_authorizations_upload",
        request=UploadSerializer,
        responses={
            201: StoredAnswerSerializer,
            400: OpenApiResponse(
                ApiErrorSerializer,
                description="An authorization does not recover to the payer or differs from "
                "what .../unsigned asks (the reason names the field); nothing is stored.",
            ),
            403: OpenApiResponse(ApiErrorSerializer, description="Not the subscription's owner."),
        },
    )
    def post(self, request: Request, pk: Any = None) -> Response:
        """Upload the payer's signatures of coming periods. Each is verified before anything
        is stored: it must recover to the subscription's payer and every field (payer,
        recipient, amount, window, nonce, domain) must be what .../unsigned asks."""
        subscription = self.get_object()
        serializer = UploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        items = []
        for item in serializer.validated_data["authorizations"]:
            data = item.get("typed_data")
            items.append(
                UploadedAuthorization(
                    period_index=item["period_index"],
                    signature=item["signature"],
                    message=data["message"] if data is not None else item["message"],
                    domain=data["domain"] if data is not None else None,
                )
            )
        authorization_upload(subscription=subscription, user=request.user, items=items)
        subscription.refresh_from_db()
        return self._stored(subscription, status.HTTP_201_CREATED)
