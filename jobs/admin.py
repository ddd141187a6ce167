"""Operator views of jobs: filter, inspect (with the attempts timeline), and retry failed ones
through the API's service. Jobs are records: their pages are read-only (no Save button)."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from core.admin_filters import RangeListFilter
from core.admin_log import admin_log_action
from core.console import (
    age_cell,
    json_block,
    money_text,
    short_link,
    status_badge,
    time_with_age,
    transaction_link,
)
from core.export import queryset_csv
from jobs import services
from jobs.exports import JOB_CSV_COLUMNS
from jobs.models import Job, JobAttempt

WEI_PER_ETHER = Decimal(10**18)
# Characters of an attempt's error in the timeline (the whole error is the job's "Error").
ERROR_SHOWN = 200


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
    ether = format((Decimal(attempt.fee_wei) / WEI_PER_ETHER).normalize(), "f")
    return f"{ether} ETH ({attempt.gas_used} gas)"


def _transactions(network: str, hashes: list[str]) -> SafeString:
    return format_html_join(
        format_html("<br>"), "{}", ((transaction_link(network, value),) for value in hashes)
    )


def attempt_timeline(attempts: list[JobAttempt], *, network: str) -> SafeString:
    """The attempts of one job as a table: when each ran (ms), how long, how long the job
    waited before it (the retry backoff), who ran it and how it ended, its transactions
    (linked to the network's explorer) and what the relayer paid."""
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
                status_badge(attempt.outcome, attempt.get_outcome_display()),
                _ms(attempt.started_at),
                _ms(attempt.finished_at),
                _seconds(attempt.duration_ms),
                _seconds(waited),
                attempt.worker,
                format_html(
                    "<code>{}</code> {}",
                    attempt.error_code,
                    Truncator(attempt.error_message).chars(ERROR_SHOWN),
                ),
                _transactions(network, attempt.transaction_hashes or []),
                _fee(attempt),
            )
        )
    # (header, class): "wrap" columns break long words (worker names, errors, hashes); the
    # others break at spaces only, so that numbers and dates stay readable.
    columns = (
        ("#", ""),
        ("Outcome", ""),
        ("Started (UTC)", "time"),
        ("Finished (UTC)", "time"),
        ("Took", "nowrap"),
        ("Waited before", "nowrap"),
        ("Worker", "wrap worker"),
        ("Error", "wrap error"),
        ("Transactions", "nowrap"),
        ("Fee (relayer)", "fee"),
    )
    cells = "".join(f'<td class="{css}">{{}}</td>' for _, css in columns)
    return format_html(
        '<table class="attempt-timeline"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
        format_html_join("", "<th>{}</th>", ((name,) for name, _ in columns)),
        format_html_join("", "<tr>" + cells + "</tr>", rows),
    )


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    # What an operator scans, fitting 1280 px: the full id, the source, the times and the
    # error text are on the job's page (the id is searchable in full, the source a filter).
    list_display = (
        "short_id",
        "subscription_link",
        "job_status",
        "progress_bar",
        "attempts",
        "error_code",
        "amount",
        "network",
        "age",
    )
    list_display_links = ("short_id",)
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
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "job_id",
                    "job_status",
                    "progress",
                    "attempts",
                    "source",
                    "subscription_full",
                    "payment_link",
                    "amount",
                    "network",
                    "transaction",
                    "error_code",
                    "error",
                )
            },
        ),
        (
            "Times (UTC)",
            {
                "fields": (
                    "created",
                    "enqueued",
                    "started",
                    "next_attempt",
                    "finished",
                    "lease",
                    "recoveries",
                )
            },
        ),
        ("Attempts", {"fields": ("attempts_timeline",)}),
        ("Data and result", {"fields": ("data_json", "result_json")}),
    )

    @admin.display(description="Job", ordering="id")
    def short_id(self, job: Job) -> SafeString:
        return format_html('<code title="{}">{}</code>', job.pk, str(job.pk)[:8])

    @admin.display(description="Job id")
    def job_id(self, job: Job) -> SafeString:
        return format_html("<code>{}</code>", job.pk)

    @admin.display(description="Subscription", ordering="subscription_id")
    def subscription_link(self, job: Job) -> SafeString:
        url = reverse("admin:subscriptions_subscription_change", args=[job.subscription_id])
        return short_link(url, f"#{job.subscription_id}", job.subscription.service_name)

    @admin.display(description="Subscription")
    def subscription_full(self, job: Job) -> SafeString:
        url = reverse("admin:subscriptions_subscription_change", args=[job.subscription_id])
        return format_html(
            '<a href="{}">#{} {}</a>', url, job.subscription_id, job.subscription.service_name
        )

    @admin.display(description="Payment", ordering="payment_id")
    def payment_link(self, job: Job) -> SafeString:
        payment = job.payment
        url = reverse("admin:subscriptions_payment_change", args=[payment.pk])
        return format_html(
            '<a href="{}">#{}</a> (period {}, {})',
            url,
            payment.pk,
            payment.period_index,
            payment.get_status_display(),
        )

    @admin.display(description="Status", ordering="status")
    def job_status(self, job: Job) -> SafeString:
        return status_badge(job.status, job.get_status_display())

    @admin.display(description="Progress", ordering="progress")
    def progress_bar(self, job: Job) -> SafeString:
        return format_html(
            '<progress class="autopay-progress" max="100" value="{}" title="{} %"></progress>',
            job.progress,
            job.progress,
        )

    @admin.display(description="Attempts", ordering="attempts_made")
    def attempts(self, job: Job) -> str:
        return f"{job.attempts_made}/{job.max_attempts}"

    @admin.display(description="Amount", ordering="payment__amount")
    def amount(self, job: Job) -> str:
        payment = job.payment
        return money_text(payment.amount, decimals=payment.token_decimals, network=payment.network)

    @admin.display(description="Network", ordering="payment__network")
    def network(self, job: Job) -> str:
        return job.payment.network

    @admin.display(description="Age", ordering="created_at")
    def age(self, job: Job) -> SafeString:
        return age_cell(job.created_at)

    @admin.display(description="Transaction")
    def transaction(self, job: Job) -> SafeString:
        payment = job.payment
        return transaction_link(payment.network, payment.transaction_hash, short=False)

    @admin.display(description="Created")
    def created(self, job: Job) -> Any:
        return time_with_age(job.created_at)

    @admin.display(description="Published to the queue")
    def enqueued(self, job: Job) -> Any:
        return time_with_age(job.enqueued_at)

    @admin.display(description="Started")
    def started(self, job: Job) -> Any:
        return time_with_age(job.started_at)

    @admin.display(description="Next attempt due")
    def next_attempt(self, job: Job) -> Any:
        return time_with_age(job.next_attempt_at)

    @admin.display(description="Finished")
    def finished(self, job: Job) -> Any:
        return time_with_age(job.finished_at)

    @admin.display(description="Lease")
    def lease(self, job: Job) -> Any:
        if not job.lease_owner:
            return "-"
        return format_html("{} until {}", job.lease_owner, time_with_age(job.lease_expires_at))

    @admin.display(description="Data (the job's input)")
    def data_json(self, job: Job) -> SafeString:
        return json_block(job.data)

    @admin.display(description="Result")
    def result_json(self, job: Job) -> SafeString:
        return json_block(job.result)

    @admin.action(description="Export selected jobs as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Job]) -> Any:
        """Streamed; "select all" exports every filtered row."""
        return queryset_csv(queryset.order_by("-created_at"), JOB_CSV_COLUMNS, name="jobs")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [name for _, options in self.fieldsets for name in options["fields"]]

    @admin.display(description="Attempts")
    def attempts_timeline(self, job: Job) -> SafeString:
        return attempt_timeline(list(job.attempts.all()), network=job.payment.network)

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
