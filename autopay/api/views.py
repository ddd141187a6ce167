"""Engine endpoints that need the chain: a wallet's token balance."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from web3.exceptions import Web3Exception

from autopay.chain.client import ChainUnavailable, token_balance
from core.api import ApiErrorSerializer, error_response
from core.networks import active_network, network_registry, use_network
from subscriptions import selectors
from subscriptions.models import PayerWallet

logger = logging.getLogger(__name__)

WalletBalanceSerializer = inline_serializer(
    "WalletBalance",
    fields={
        "address": serializers.CharField(),
        "network": serializers.CharField(help_text="CAIP-2 id of the network read."),
        "token": serializers.CharField(help_text="The network's configured token."),
        "balance": serializers.CharField(help_text="In token units, an exact decimal string."),
        "balanceAtomic": serializers.CharField(help_text="In the token's smallest unit."),
    },
)


def _balance(token: str, owner: str, *, urls: int) -> int:
    """The balance on the active network, trying each of its RPC URLs once (one that fails is
    set aside, so the next call goes to the next URL)."""
    for _ in range(urls - 1):
        try:
            return token_balance(token, owner)
        except ChainUnavailable:
            continue
    return token_balance(token, owner)


class WalletBalanceView(GenericAPIView):
    """GET /api/wallets/{id}/balance: one of the caller's wallets, read on the chain."""

    not_found_name = "Wallet"  # the API's name for a payer wallet

    def get_queryset(self) -> QuerySet[PayerWallet]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return PayerWallet.objects.none()
        return selectors.wallet_list(user=self.request.user)

    @extend_schema(
        operation_id="wallets_balance_retrieve",
        parameters=[
            OpenApiParameter(
                "network",
                str,
                description="CAIP-2 id of a configured network (default: the default network).",
            )
        ],
        responses={
            200: WalletBalanceSerializer,
            503: OpenApiResponse(
                ApiErrorSerializer,
                description="No token configured for the network, no token contract at its "
                "address, or the network's RPC unreachable (the reason is in the message)",
            ),
        },
    )
    def get(self, request: Request, pk: Any = None) -> Response:
        """The wallet's token balance on a configured network (``?network=``)."""
        wallet = self.get_object()
        name = request.query_params.get("network")
        if name is None:
            network = active_network()
        else:
            registry = network_registry()
            if name not in registry:
                configured = ", ".join(registry)
                raise serializers.ValidationError(
                    {
                        "network": [
                            f"Network {name} is not configured here; use one of: {configured}."
                        ]
                    }
                )
            network = registry[name]
        if not network.token_address:
            return error_response(
                f"No token is configured for network {network.network}.",
                status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        with use_network(network):
            try:
                atomic = _balance(network.token_address, wallet.address, urls=len(network.rpc_urls))
            except ChainUnavailable as exc:
                return error_response(
                    f"The RPC of network {network.network} is unreachable ({exc}); "
                    "try again shortly.",
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                )
            except Web3Exception as exc:
                # No contract at the address (empty answer) or one that is not the token: the
                # operator's configuration, not the caller's request.
                logger.warning(
                    "balance: the token %s on %s did not answer balanceOf: %s",
                    network.token_address,
                    network.network,
                    type(exc).__name__,
                )
                return error_response(
                    f"The token {network.token_address} of network {network.network} did not "
                    "answer balanceOf (no token contract at that address on the chain?).",
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                )
        amount = Decimal(atomic).scaleb(-network.token_decimals)
        return Response(
            {
                "address": wallet.address,
                "network": network.network,
                "token": network.token_address,
                "balance": format(amount.normalize(), "f") if atomic else "0",
                "balanceAtomic": str(atomic),
            }
        )
