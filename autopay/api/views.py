"""Engine endpoints that need the chain: a wallet's token balance."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from autopay.chain.client import ChainUnavailable, token_balance
from core.api import ApiErrorSerializer, error_response
from subscriptions import selectors
from subscriptions.models import PayerWallet

WalletBalanceSerializer = inline_serializer(
    "WalletBalance",
    fields={
        "address": serializers.CharField(),
        "token": serializers.CharField(help_text="TOKEN_ADDRESS"),
        "balance": serializers.CharField(help_text="In token units, an exact decimal string."),
        "balanceAtomic": serializers.CharField(help_text="In the token's smallest unit."),
    },
)


class WalletBalanceView(GenericAPIView):
    """GET /api/wallets/{id}/balance: one of the caller's wallets, read on the chain."""

    def get_queryset(self) -> QuerySet[PayerWallet]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return PayerWallet.objects.none()
        return selectors.wallet_list(user=self.request.user)

    @extend_schema(
        operation_id="wallets_balance_retrieve",
        responses={
            200: WalletBalanceSerializer,
            503: OpenApiResponse(
                ApiErrorSerializer, description="No TOKEN_ADDRESS, or the chain RPC unreachable"
            ),
        },
    )
    def get(self, request: Request, pk: Any = None) -> Response:
        """The wallet's token balance on the configured chain."""
        wallet = self.get_object()
        if not settings.TOKEN_ADDRESS:
            return error_response(
                "No TOKEN_ADDRESS is configured.", status.HTTP_503_SERVICE_UNAVAILABLE
            )
        try:
            atomic = token_balance(settings.TOKEN_ADDRESS, wallet.address)
        except ChainUnavailable as exc:
            return error_response(str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
        amount = Decimal(atomic).scaleb(-settings.TOKEN_DECIMALS)
        return Response(
            {
                "address": wallet.address,
                "token": settings.TOKEN_ADDRESS,
                "balance": format(amount.normalize(), "f") if atomic else "0",
                "balanceAtomic": str(atomic),
            }
        )
