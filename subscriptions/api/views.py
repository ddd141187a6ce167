"""Subscription and payment endpoints. Views validate, call a service, shape the answer."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.filters import OrderingFilter, SearchFilter
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from core.export import CsvExportMixin, csv_list_schema
from core.limits import WalletCreateRateThrottle
from subscriptions import selectors, services
from subscriptions.api.serializers import (
    PaymentOutputSerializer,
    SubscriptionInputSerializer,
    SubscriptionOutputSerializer,
    SubscriptionUpdateSerializer,
    WalletInputSerializer,
    WalletOutputSerializer,
)
from subscriptions.exports import PAYMENT_CSV_COLUMNS
from subscriptions.filters import (
    PAYMENT_ORDERING_FIELDS,
    PAYMENT_SEARCH_FIELDS,
    SUBSCRIPTION_ORDERING_FIELDS,
    SUBSCRIPTION_SEARCH_FIELDS,
    PaymentFilter,
    SubscriptionFilter,
)
from subscriptions.models import PayerWallet, Payment, Subscription

ErrorResponse = inline_serializer(
    "ErrorResponse",
    fields={"success": serializers.BooleanField(), "error": serializers.CharField()},
)


# Filters (django-filter), ``?search=`` and ``?ordering=`` on every list.
LIST_FILTER_BACKENDS = [filters.DjangoFilterBackend, SearchFilter, OrderingFilter]


class SubscriptionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = SubscriptionOutputSerializer
    filter_backends = LIST_FILTER_BACKENDS
    filterset_class = SubscriptionFilter
    search_fields = SUBSCRIPTION_SEARCH_FIELDS
    ordering_fields = SUBSCRIPTION_ORDERING_FIELDS

    def get_queryset(self) -> QuerySet[Subscription]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return Subscription.objects.none()
        return selectors.with_signed_periods(selectors.subscription_list(user=self.request.user))

    def _answer(
        self, subscription: Subscription, http_status: int = status.HTTP_200_OK
    ) -> Response:
        return Response(SubscriptionOutputSerializer(subscription).data, status=http_status)

    @extend_schema(
        request=SubscriptionInputSerializer, responses={201: SubscriptionOutputSerializer}
    )
    def create(self, request: Request) -> Response:
        serializer = SubscriptionInputSerializer(
            data=request.data, context={"request": request, "owner": request.user}
        )
        serializer.is_valid(raise_exception=True)
        subscription = services.subscription_create(owner=request.user, **serializer.validated_data)
        return self._answer(subscription, status.HTTP_201_CREATED)

    @extend_schema(
        request=SubscriptionUpdateSerializer, responses={200: SubscriptionOutputSerializer}
    )
    def partial_update(self, request: Request, pk: Any = None) -> Response:
        subscription = self.get_object()
        serializer = SubscriptionUpdateSerializer(
            data=request.data,
            context={
                "request": request,
                "owner": subscription.owner,
                "subscription": subscription,
            },
        )
        serializer.is_valid(raise_exception=True)
        subscription = services.subscription_update(
            subscription=subscription, **serializer.validated_data
        )
        return self._answer(subscription)

    @extend_schema(
        request=SubscriptionUpdateSerializer, responses={200: SubscriptionOutputSerializer}
    )
    def update(self, request: Request, pk: Any = None) -> Response:
        return self.partial_update(request, pk)

    def _transition(self, service: Any) -> Response:
        return self._answer(service(subscription=self.get_object()))

    @extend_schema(request=None, responses={200: SubscriptionOutputSerializer, 400: ErrorResponse})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: Any = None) -> Response:
        return self._transition(services.subscription_cancel)

    @extend_schema(request=None, responses={200: SubscriptionOutputSerializer, 400: ErrorResponse})
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: Any = None) -> Response:
        return self._transition(services.subscription_pause)

    @extend_schema(request=None, responses={200: SubscriptionOutputSerializer, 400: ErrorResponse})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: Any = None) -> Response:
        return self._transition(services.subscription_resume)


class PaymentViewSet(CsvExportMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = PaymentOutputSerializer
    filter_backends = LIST_FILTER_BACKENDS
    filterset_class = PaymentFilter
    search_fields = PAYMENT_SEARCH_FIELDS
    ordering_fields = PAYMENT_ORDERING_FIELDS
    csv_columns = PAYMENT_CSV_COLUMNS
    csv_name = "payments"

    def get_queryset(self) -> QuerySet[Payment]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return Payment.objects.none()
        return selectors.payment_list(user=self.request.user)

    @csv_list_schema(PaymentOutputSerializer)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        """Payments, newest period first; ``?format=csv`` (or ``Accept: text/csv``) streams
        every matching row as CSV instead of a page of JSON."""
        if self.wants_csv():
            return self.csv_export()
        return super().list(request, *args, **kwargs)


class WalletViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Payer wallets: the server generates the key, keeps it encrypted, answers the address."""

    serializer_class = WalletOutputSerializer
    not_found_name = "Wallet"  # the API's name for a payer wallet

    def get_throttles(self) -> list[BaseThrottle]:
        # Each wallet is a new server-held key: creation has a tight limit of its own.
        throttles = list(super().get_throttles())
        if self.action == "create":
            throttles.append(WalletCreateRateThrottle())
        return throttles

    def get_queryset(self) -> QuerySet[PayerWallet]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return PayerWallet.objects.none()
        return selectors.wallet_list(user=self.request.user)

    @extend_schema(request=WalletInputSerializer, responses={201: WalletOutputSerializer})
    def create(self, request: Request) -> Response:
        """Create a dedicated auto-pay wallet; fund its address with the token to pay from it."""
        serializer = WalletInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        wallet = services.wallet_create(owner=request.user, **serializer.validated_data)
        return Response(WalletOutputSerializer(wallet).data, status=status.HTTP_201_CREATED)
