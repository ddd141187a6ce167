"""Job endpoints in the baseline's shapes."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.filters import OrderingFilter, SearchFilter
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import ApiErrorSerializer, error_response, success_response
from core.export import CsvExportMixin, csv_list_schema
from jobs import selectors, services
from jobs.api.serializers import (
    JobStatsSerializer,
    JobStatusSerializer,
    JobSummarySerializer,
    job_status_schema,
)
from jobs.exports import JOB_CSV_COLUMNS
from jobs.filters import JOB_ORDERING_FIELDS, JOB_SEARCH_FIELDS, JobFilter
from jobs.models import Job
from subscriptions.models import Subscription
from subscriptions.selectors import subscription_list


def _success(name: str, data: Any) -> Any:
    """The schema of ``{"success": true, "data": ...}``."""
    return inline_serializer(name, fields={"success": serializers.BooleanField(), "data": data})


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


class JobViewSet(CsvExportMixin, viewsets.GenericViewSet):
    lookup_value_regex = "[^/]+"
    filter_backends = [filters.DjangoFilterBackend, SearchFilter, OrderingFilter]
    filterset_class = JobFilter
    search_fields = JOB_SEARCH_FIELDS
    ordering_fields = JOB_ORDERING_FIELDS
    csv_columns = JOB_CSV_COLUMNS
    csv_name = "jobs"

    def get_queryset(self) -> QuerySet[Job]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return Job.objects.none()
        return selectors.job_list(user=self.request.user)

    def _get_job(self, pk: Any) -> Job | None:
        job_id = _uuid_or_none(pk)
        if job_id is None:
            return None
        return self.get_queryset().filter(pk=job_id).first()

    @extend_schema(operation_id="jobs_list")
    @csv_list_schema(JobSummarySerializer)
    def list(self, request: Request) -> Any:
        """Jobs, newest first, filtered, searched and ordered, paginated; ``?format=csv`` (or
        ``Accept: text/csv``) streams every matching row as CSV instead."""
        if self.wants_csv():
            return self.csv_export()
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        rows = JobSummarySerializer(page, many=True).data
        return self.get_paginated_response(rows)

    @extend_schema(responses={200: _success("JobStatusResponse", job_status_schema())})
    def retrieve(self, request: Request, pk: Any = None) -> Response:
        """Status of one job, in the baseline's shape."""
        job = self._get_job(pk)
        if job is None:
            return error_response("Job not found.", status.HTTP_404_NOT_FOUND)
        return success_response(JobStatusSerializer(job, context={"request": request}).data)

    @extend_schema(
        responses={200: _success("SubscriptionJobsResponse", JobSummarySerializer(many=True))}
    )
    @action(detail=False, methods=["get"], url_path=r"subscription/(?P<subscription_id>[^/]+)")
    def subscription(self, request: Request, subscription_id: str) -> Response:
        """Every job of one subscription, newest first."""
        if not subscription_id.isdigit() or not (
            subscription_list(user=request.user).filter(pk=int(subscription_id)).exists()
        ):
            return error_response("Subscription not found.", status.HTTP_404_NOT_FOUND)
        jobs = self.get_queryset().filter(subscription_id=int(subscription_id))
        return success_response(JobSummarySerializer(jobs, many=True).data)

    @extend_schema(responses={200: _success("JobStatsResponse", JobStatsSerializer())})
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        """Counts by status, broker queue length, oldest waiting job and failure rates."""
        return success_response(selectors.job_stats(user=request.user))

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: Any = None) -> Response:
        """Retry a failed job: a new job on the same payment."""
        job = self._get_job(pk)
        if job is None:
            return error_response("Job not found.", status.HTTP_404_NOT_FOUND)
        # Staff retrying another user's job need the admin's permission to change jobs.
        self.check_object_permissions(request, job)
        return _queued(services.job_retry(job=job))


def _queued(job: Job) -> Response:
    """The baseline's answer to a queued payment job."""
    return Response(
        {
            "success": True,
            "message": "Payment job queued successfully",
            "data": {"jobId": str(job.pk), "subscriptionId": str(job.subscription_id)},
        }
    )


TriggerResponse = inline_serializer(
    "TriggerPaymentResponse",
    fields={
        "success": serializers.BooleanField(),
        "message": serializers.CharField(),
        "data": inline_serializer(
            "TriggerPaymentData",
            fields={"jobId": serializers.CharField(), "subscriptionId": serializers.CharField()},
        ),
    },
)


class SubscriptionTriggerViewSet(viewsets.GenericViewSet):
    """POST /api/subscriptions/{id}/trigger-payment: creating a job is the jobs app's action."""

    def get_queryset(self) -> QuerySet[Subscription]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real user
            return Subscription.objects.none()
        return subscription_list(user=self.request.user)

    @extend_schema(
        operation_id="subscriptions_trigger_payment_create",
        request=None,
        responses={
            200: TriggerResponse,
            400: OpenApiResponse(ApiErrorSerializer, description="Auto-pay off or not active"),
            409: OpenApiResponse(ApiErrorSerializer, description="Period in flight or paid"),
        },
    )
    @action(detail=True, methods=["post"], url_path="trigger-payment")
    def trigger_payment(self, request: Request, pk: Any = None) -> Response:
        """Queue a payment job for the subscription's current due period."""
        return _queued(services.payment_trigger(subscription=self.get_object()))
