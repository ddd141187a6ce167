"""Operator views of jobs: filter, inspect, and retry failed ones through the API's service."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from config.admin_filters import RangeListFilter
from config.admin_log import admin_log_action
from config.export import queryset_csv
from jobs import services
from jobs.exports import JOB_CSV_COLUMNS
from jobs.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "subscription",
        "payment",
        "source",
        "status",
        "progress",
        "attempts_made",
        "error_code",
        "created_at",
        "finished_at",
    )
    list_filter = (
        "status",
        "source",
        "error_code",
        ("payment__network", admin.AllValuesFieldListFilter),
        ("payment__amount", RangeListFilter),
        ("finished_at", admin.DateFieldListFilter),
    )
    search_fields = (
        "=id",
        "=subscription__id",
        "=payment__id",
        "subscription__service_name",
        "error",
        "payment__transaction_hash",
        "payment__payer_address",
        "payment__recipient_address",
    )
    list_select_related = ("subscription", "payment")
    date_hierarchy = "created_at"
    actions = ("retry_selected", "export_csv")

    @admin.action(description="Export selected jobs as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Job]) -> Any:
        """Streamed; "select all" exports every filtered row."""
        return queryset_csv(queryset.order_by("-created_at"), JOB_CSV_COLUMNS, name="jobs")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in Job._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Failed jobs are kept for debugging, and deleting an open job would strand its
        # payment (no job left to process it); the purge task removes old completed jobs.
        return False

    @admin.action(description="Retry selected failed jobs")
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        retried = 0
        for job in queryset.order_by("created_at"):
            try:
                new_job = services.job_retry(job=job)
                retried += 1
                admin_log_action(
                    user=request.user, objects=[job], message=f"Retried as job {new_job.pk}."
                )
            except (services.JobNotRetryable, services.JobAlreadyOpen) as exc:
                self.message_user(request, f"{job.pk}: {exc}", messages.WARNING)
        self.message_user(request, f"{retried} job(s) queued for retry.", messages.SUCCESS)
