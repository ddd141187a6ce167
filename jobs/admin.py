"""Operator views of jobs: filter, inspect (with the attempts timeline), and retry failed ones
through the API's service. Jobs are records: their pages are read-only (no Save button)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from core.admin_filters import RangeListFilter
from core.admin_log import admin_log_action
from core.export import queryset_csv
from jobs import services
from jobs.exports import JOB_CSV_COLUMNS
from jobs.models import Job, JobAttempt


def _ms(value: Any) -> str:
    """A time to the millisecond, in UTC."""
    if not value:
        return ""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def _seconds(milliseconds: float | None) -> str:
    return "" if milliseconds is None else f"{milliseconds / 1000:.3f} s"


def _fee(attempt: JobAttempt) -> str:
    if attempt.fee_wei is None:
        return ""
    return f"{attempt.fee_wei} wei ({attempt.gas_used} gas)"


def attempt_timeline(attempts: list[JobAttempt]) -> SafeString:
    """The attempts of one job as a table: when each ran (ms), how long, how long the job
    waited before it (the retry backoff), who ran it and how it ended."""
    if not attempts:
        return format_html("<p>{}</p>", "No attempt yet.")
    rows = []
    previous_end = None
    for attempt in attempts:
        waited = None
        if previous_end is not None:
            waited = (attempt.started_at - previous_end).total_seconds() * 1000
        previous_end = attempt.finished_at or previous_end
        rows.append(
            (
                attempt.number,
                attempt.get_outcome_display(),
                _ms(attempt.started_at),
                _ms(attempt.finished_at),
                _seconds(attempt.duration_ms),
                _seconds(waited),
                attempt.worker,
                attempt.error_code,
                attempt.error_message[:300],
                ", ".join(attempt.transaction_hashes or []),
                _fee(attempt),
            )
        )
    header = (
        "Attempt",
        "Outcome",
        "Started (UTC)",
        "Finished (UTC)",
        "Took",
        "Waited before",
        "Worker",
        "Error code",
        "Error",
        "Transactions",
        "Fee (relayer)",
    )
    return format_html(
        '<table class="attempt-timeline"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
        format_html_join("", "<th>{}</th>", ((name,) for name in header)),
        format_html_join(
            "",
            "<tr>" + "<td>{}</td>" * len(header) + "</tr>",
            rows,
        ),
    )


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

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [field.name for field in Job._meta.fields] + ["attempts_timeline"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.get_fields(request, obj)

    @admin.display(description="Attempts")
    def attempts_timeline(self, job: Job) -> SafeString:
        return attempt_timeline(list(job.attempts.all()))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A job changes through its services only (engine, retry): the page is read-only.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Failed jobs are kept for debugging, and deleting an open job would strand its
        # payment (no job left to process it); the purge task removes old completed jobs.
        return False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("jobs.change_job"))

    @admin.action(description="Retry selected failed jobs", permissions=["retry"])
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
