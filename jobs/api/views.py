"""Job endpoints in the baseline's shapes."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from config.api import error_response, success_response
from jobs import selectors, services
from jobs.api.serializers import JobStatsSerializer, JobStatusSerializer, JobSummarySerializer
from jobs.models import Job
from subscriptions.selectors import subscription_list


def _success(name: str, data: Any) -> Any:
    """The schema of ``{"success": true, "data": ...}``."""
    return inline_serializer(name, fields={"success": serializers.BooleanField(), "data": data})


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


class JobViewSet(viewsets.GenericViewSet):
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> QuerySet[Job]:
        return selectors.job_list(user=self.request.user)

    def _get_job(self, pk: Any) -> Job | None:
        job_id = _uuid_or_none(pk)
        if job_id is None:
            return None
        return self.get_queryset().filter(pk=job_id).first()

    @extend_schema(
        operation_id="jobs_list",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=Job.Status.values),
            OpenApiParameter("subscription", OpenApiTypes.INT),
        ],
        responses={200: JobSummarySerializer(many=True)},
    )
    def list(self, request: Request) -> Response:
        """Jobs, newest first, filtered by status and subscription, paginated."""
        queryset = self.get_queryset()
        wanted_status = request.query_params.get("status")
        if wanted_status:
            if wanted_status not in Job.Status.values:
                allowed = ", ".join(Job.Status.values)
                return error_response(f"Unknown status {wanted_status!r}; use one of {allowed}.")
            queryset = queryset.filter(status=wanted_status)
        subscription = request.query_params.get("subscription")
        if subscription:
            if not subscription.isdigit():
                return error_response("subscription must be a subscription id (an integer).")
            queryset = queryset.filter(subscription_id=int(subscription))
        page = self.paginate_queryset(queryset)
        rows = JobSummarySerializer(page, many=True).data
        return self.get_paginated_response(rows)

    @extend_schema(responses={200: _success("JobStatusResponse", JobStatusSerializer())})
    def retrieve(self, request: Request, pk: Any = None) -> Response:
        """Status of one job, in the baseline's shape."""
        job = self._get_job(pk)
        if job is None:
            return error_response("Job not found", status.HTTP_404_NOT_FOUND)
        return success_response(JobStatusSerializer(job).data)

    @extend_schema(
        responses={200: _success("SubscriptionJobsResponse", JobSummarySerializer(many=True))}
    )
    @action(detail=False, methods=["get"], url_path=r"subscription/(?P<subscription_id>[^/]+)")
    def subscription(self, request: Request, subscription_id: str) -> Response:
        """Every job of one subscription, newest first."""
        if not subscription_id.isdigit() or not (
            subscription_list(user=request.user).filter(pk=int(subscription_id)).exists()
        ):
            return error_response("Subscription not found", status.HTTP_404_NOT_FOUND)
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
            return error_response("Job not found", status.HTTP_404_NOT_FOUND)
        # Staff retrying another user's job need the admin's permission to change jobs.
        self.check_object_permissions(request, job)
        try:
            new_job = services.job_retry(job=job)
        except services.JobNotRetryable as exc:
            return error_response(str(exc), status.HTTP_409_CONFLICT)
        except services.JobAlreadyOpen as exc:
            return error_response(str(exc), status.HTTP_409_CONFLICT)
        return Response(
            {
                "success": True,
                "message": "Payment job queued successfully",
                "data": {"jobId": str(new_job.pk), "subscriptionId": str(job.subscription_id)},
            }
        )
