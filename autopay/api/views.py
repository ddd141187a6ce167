"""Payer wallet endpoints: create (server generates the key) and list; the key never leaves."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from autopay.api.limits import WalletCreateRateThrottle
from autopay.api.serializers import WalletInputSerializer, WalletOutputSerializer
from autopay.models import PayerWallet
from autopay.wallets import wallet_create
from config.api import ApiErrorSerializer, error_response

logger = logging.getLogger(__name__)

WalletBalanceSerializer = inline_serializer(
    "WalletBalance",
    fields={
        "address": serializers.CharField(),
        "token": serializers.CharField(help_text="TOKEN_ADDRESS"),
        "balance": serializers.CharField(help_text="In token units, an exact decimal string."),
        "balanceAtomic": serializers.CharField(help_text="In the token's smallest unit."),
    },
)


class WalletViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = WalletOutputSerializer

    def get_throttles(self) -> list[BaseThrottle]:
        # Each wallet is a new server-held key: creation has a tight limit of its own.
        throttles = list(super().get_throttles())
        if self.action == "create":
            throttles.append(WalletCreateRateThrottle())
        return throttles

    def get_queryset(self) -> QuerySet[PayerWallet]:
        queryset = PayerWallet.objects.all()
        if self.request.user.is_staff:
            return queryset
        return queryset.filter(owner_id=self.request.user.pk)

    @extend_schema(request=WalletInputSerializer, responses={201: WalletOutputSerializer})
    def create(self, request: Request) -> Response:
        """Create a dedicated auto-pay wallet; fund its address with the token to pay from it."""
        serializer = WalletInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        wallet = wallet_create(owner=request.user, **serializer.validated_data)
        return Response(WalletOutputSerializer(wallet).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        responses={
            200: WalletBalanceSerializer,
            503: OpenApiResponse(
                ApiErrorSerializer, description="No TOKEN_ADDRESS, or the chain RPC unreachable"
            ),
        }
    )
    @action(detail=True, methods=["get"])
    def balance(self, request: Request, pk: Any = None) -> Response:
        """The wallet's token balance on the configured chain."""
        from autopay.chain.client import ChainUnavailable, token_balance

        wallet = self.get_object()
        if not settings.TOKEN_ADDRESS:
            return error_response(
                "No TOKEN_ADDRESS is configured.", status.HTTP_503_SERVICE_UNAVAILABLE
            )
        try:
            atomic = token_balance(settings.TOKEN_ADDRESS, wallet.address)
        except ChainUnavailable as exc:
            return error_response(str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
        from decimal import Decimal

        amount = Decimal(atomic).scaleb(-settings.TOKEN_DECIMALS)
        return Response(
            {
                "address": wallet.address,
                "token": settings.TOKEN_ADDRESS,
                "balance": format(amount.normalize(), "f") if atomic else "0",
                "balanceAtomic": str(atomic),
            }
        )
