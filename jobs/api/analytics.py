"""GET /api/analytics: payment volume and success rate per day and per service.

The same figures as the admin dashboard, for integrators; scoped to the requesting user (staff
see every subscription). Amounts are exact decimal strings.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import error_response, success_response
from jobs import analytics


class AnalyticsQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(
        min_value=1, max_value=analytics.MAX_DAYS, default=analytics.DEFAULT_DAYS
    )


def volume_representation(volume: analytics.PaymentVolume) -> dict[str, Any]:
    return {
        "completed": volume.completed,
        "failed": volume.failed,
        "completedAmount": analytics.decimal_text(volume.completed_amount),
        "failedAmount": analytics.decimal_text(volume.failed_amount),
        "successRate": volume.success_rate,
    }


class AnalyticsSerializer(serializers.Serializer):
    """{days, from, to, perDay: [{date, ...}], perService: [{serviceName, ...}], totals}."""

    def to_representation(self, report: analytics.PaymentAnalytics) -> dict[str, Any]:
        return {
            "days": report.days,
            "from": report.first_day.isoformat(),
            "to": report.last_day.isoformat(),
            "perDay": [
                {"date": row.day.isoformat(), **volume_representation(row.volume)}
                for row in report.per_day
            ],
            "perService": [
                {"serviceName": row.service_name, **volume_representation(row.volume)}
                for row in report.per_service
            ],
            "totals": volume_representation(report.totals),
        }


class PaymentVolumeSerializer(serializers.Serializer):
    """Schema only (``volume_representation`` makes it): amounts are exact decimal strings."""

    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    completedAmount = serializers.CharField()
    failedAmount = serializers.CharField()
    successRate = serializers.FloatField(
        allow_null=True, help_text="completed / (completed + failed); null when none finished."
    )


class DayVolumeSerializer(PaymentVolumeSerializer):
    date = serializers.DateField()


class ServiceVolumeSerializer(PaymentVolumeSerializer):
    serviceName = serializers.CharField()


AnalyticsResponse = inline_serializer(
    "PaymentAnalyticsResponse",
    fields={
        "success": serializers.BooleanField(),
        "data": inline_serializer(
            "PaymentAnalytics",
            fields={
                "days": serializers.IntegerField(),
                "from": serializers.DateField(),
                "to": serializers.DateField(),
                "perDay": DayVolumeSerializer(many=True),
                "perService": ServiceVolumeSerializer(many=True),
                "totals": PaymentVolumeSerializer(),
            },
        ),
    },
)


class AnalyticsView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "days",
                OpenApiTypes.INT,
                description=f"Window in days, ending today (1-{analytics.MAX_DAYS}).",
                default=analytics.DEFAULT_DAYS,
            )
        ],
        responses={200: AnalyticsResponse},
    )
    def get(self, request: Request) -> Response:
        """Payment volume and success rate per day and per service over the last ``days`` days.

        A payment counts once, on the day it completed or failed, by its current status.
        """
        # A plain dict, not the QueryDict: "?days=" is an error here, not the default.
        raw = {key: request.query_params[key] for key in ("days",) if key in request.query_params}
        query = AnalyticsQuerySerializer(data=raw)
        if not query.is_valid():
            message = "; ".join(str(error) for error in query.errors.get("days", []))
            return error_response(f"days: {message or 'invalid value'}")
        report = analytics.payment_analytics(user=request.user, days=query.validated_data["days"])
        return success_response(AnalyticsSerializer(report).data)
