"""Webhook endpoints (secret shown once, rotatable) and their delivery log with resend."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.utils import (
    OpenApiCallback,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.throttling import BaseThrottle

from core.filters import ChoiceFilter, MultipleChoiceFilter, time_range
from core.limits import WebhookResendRateThrottle
from subscriptions.webhooks import selectors, services
from subscriptions.webhooks.api.serializers import (
    WebhookDeliveryDetailSerializer,
    WebhookDeliveryOutputSerializer,
    WebhookEndpointInputSerializer,
    WebhookEndpointOutputSerializer,
    WebhookEndpointUpdateSerializer,
    WebhookEndpointWithSecretSerializer,
)
from subscriptions.webhooks.models import EventType, WebhookDelivery, WebhookEndpoint

# What the endpoint receives (an OpenAPI callback on the creation that registers it).
WEBHOOK_EVENT_CALLBACK = OpenApiCallback(
    "event",
    "{$request.body#/url}",
    extend_schema(
        summary="An event, sent to the endpoint (Standard Webhooks)",
        description=(
            "Headers: `webhook-id` (the event's id, `evt_…`, the same on every retry), "
            "`webhook-timestamp` (this attempt's time, Unix seconds) and `webhook-signature` "
            "(`v1,<base64>`; two, space-separated, during a secret rotation): HMAC-SHA256 with "
            "the secret over `{webhook-id}.{webhook-timestamp}.{raw body}`. Verify it before "
            "trusting the body. Any 2xx acknowledges the event; otherwise it is retried with "
            "backoff for 3 days with the same `webhook-id`."
        ),
        request=inline_serializer(
            "WebhookEventPayload",
            fields={
                "id": serializers.CharField(help_text="evt_…, as webhook-id."),
                "type": serializers.ChoiceField(choices=EventType.choices),
                "timestamp": serializers.DateTimeField(help_text="When the event happened."),
                "data": serializers.JSONField(
                    help_text="The object as the API shows it: a Payment (payment.*), a "
                    "Subscription (subscription.*) or a JobStatus (job.failed)."
                ),
            },
        ),
        responses={200: OpenApiResponse(description="Any 2xx: received.")},
    ),
)


class WebhookEndpointViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = WebhookEndpointOutputSerializer

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return WebhookEndpoint.objects.none()
        return selectors.webhook_endpoint_list(user=self.request.user)

    def _with_secret(self, endpoint: WebhookEndpoint, secret: str, http_status: int) -> Response:
        data = dict(WebhookEndpointOutputSerializer(endpoint).data)
        return Response({**data, "secret": secret}, status=http_status)

    @extend_schema(
        request=WebhookEndpointInputSerializer,
        responses={201: WebhookEndpointWithSecretSerializer},
        callbacks=[WEBHOOK_EVENT_CALLBACK],
    )
    def create(self, request: Request) -> Response:
        """Register an endpoint; the answer holds its signing secret, shown only this once."""
        serializer = WebhookEndpointInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint, secret = services.webhook_endpoint_create(
            owner=request.user, **serializer.validated_data
        )
        return self._with_secret(endpoint, secret, status.HTTP_201_CREATED)

    @extend_schema(
        request=WebhookEndpointUpdateSerializer, responses={200: WebhookEndpointOutputSerializer}
    )
    def partial_update(self, request: Request, pk: Any = None) -> Response:
        endpoint = self.get_object()
        serializer = WebhookEndpointUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = services.webhook_endpoint_update(endpoint=endpoint, **serializer.validated_data)
        return Response(WebhookEndpointOutputSerializer(endpoint).data)

    @extend_schema(
        request=None, responses={200: WebhookEndpointWithSecretSerializer}, operation_id=None
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: Any = None) -> Response:
        """A new signing secret (shown once); the old one keeps signing beside it for
        WEBHOOK_SECRET_ROTATION_GRACE_HOURS."""
        endpoint, secret = services.webhook_endpoint_rotate_secret(endpoint=self.get_object())
        return self._with_secret(endpoint, secret, status.HTTP_200_OK)


class WebhookDeliveryFilter(filters.FilterSet):
    status = MultipleChoiceFilter(choices=WebhookDelivery.Status.choices)
    event_type = ChoiceFilter(field_name="event__type", choices=EventType.choices)
    created_after, created_before = time_range("created_at", "Created")

    class Meta:
        model = WebhookDelivery
        fields: tuple[str, ...] = ()


ENDPOINT_PARAMETER = OpenApiParameter(
    "endpoint_pk", int, OpenApiParameter.PATH, description="The webhook endpoint's id."
)


@extend_schema_view(
    list=extend_schema(parameters=[ENDPOINT_PARAMETER]),
    retrieve=extend_schema(parameters=[ENDPOINT_PARAMETER]),
    resend=extend_schema(
        parameters=[ENDPOINT_PARAMETER],
        request=None,
        responses={202: WebhookDeliveryOutputSerializer},
    ),
)
class WebhookDeliveryViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """The delivery log of one endpoint, newest first; resend one."""

    filterset_class = WebhookDeliveryFilter

    def get_throttles(self) -> list[BaseThrottle]:
        throttles = list(super().get_throttles())
        if self.action == "resend":
            throttles.append(WebhookResendRateThrottle())
        return throttles

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.action == "retrieve":
            return WebhookDeliveryDetailSerializer
        return WebhookDeliveryOutputSerializer

    def get_queryset(self) -> QuerySet[WebhookDelivery]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return WebhookDelivery.objects.none()
        endpoint_id = int(self.kwargs["endpoint_pk"])
        # Another user's endpoint, or none: 404, as for the endpoint itself.
        if (
            not selectors.webhook_endpoint_list(user=self.request.user)
            .filter(pk=endpoint_id)
            .exists()
        ):
            raise NotFound("Webhook endpoint not found.")
        queryset = selectors.webhook_delivery_list(user=self.request.user, endpoint_id=endpoint_id)
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("log")
        return queryset

    @action(detail=True, methods=["post"])
    def resend(self, request: Request, endpoint_pk: Any = None, pk: Any = None) -> Response:
        """Send the event again now (same webhook-id), with a new retry window."""
        delivery = self.get_object()
        delivery = services.webhook_delivery_resend(delivery=delivery)
        return Response(
            WebhookDeliveryOutputSerializer(delivery).data, status=status.HTTP_202_ACCEPTED
        )
