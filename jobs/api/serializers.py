"""Job output in the baseline's exact shapes (camelCase, ids and amounts as strings)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers

from jobs.models import Job, JobAttempt

# Plain strings in the schema: enums named "status" would collide with the subscription's.
_STATUSES = "One of: " + ", ".join(Job.Status.values) + "."
_SOURCES = "One of: " + ", ".join(Job.Source.values) + "."


_OUTCOMES = "One of: " + ", ".join(JobAttempt.Outcome.values) + "."


def job_result(job: Job) -> dict[str, Any] | None:
    return job.result or None


def timestamp_ms(value: Any) -> str | None:
    """An ISO 8601 time to the millisecond (the attempts ledger's precision)."""
    return value.isoformat(timespec="milliseconds") if value else None


def attempt_representation(attempt: JobAttempt, *, show_worker: bool) -> dict[str, Any]:
    """One row of the attempts ledger. The worker's name (host, process, task) is
    infrastructure: staff see it, integrators get null."""
    return {
        "attempt": attempt.number,
        "outcome": attempt.outcome,
        "startedAt": timestamp_ms(attempt.started_at),
        "finishedAt": timestamp_ms(attempt.finished_at),
        "durationMs": attempt.duration_ms,
        "worker": attempt.worker if show_worker else None,
        "errorCode": attempt.error_code or None,
        "error": attempt.error_message or None,
        "transactionHashes": list(attempt.transaction_hashes or []),
        "gasUsed": attempt.gas_used,
        "feeWei": format(attempt.fee_wei, "f") if attempt.fee_wei is not None else None,
    }


class JobStatusSerializer(serializers.Serializer):
    """GET /api/jobs/{jobId}: {status, progress, result, attemptsMade, data, ...}.

    Described in the schema by ``job_status_schema()``: fields named ``data`` and ``error``
    cannot be declared on a serializer.
    """

    def to_representation(self, job: Job) -> dict[str, Any]:
        request = self.context.get("request")
        show_worker = bool(request is not None and request.user.is_staff)
        return {
            "jobId": str(job.pk),
            "status": job.status,
            "progress": job.progress,
            "result": job_result(job),
            "attemptsMade": job.attempts_made,
            "maxAttempts": job.max_attempts,
            "attempts": [
                attempt_representation(attempt, show_worker=show_worker)
                for attempt in job.attempts.all()
            ],
            "data": job.data,
            "paymentId": str(job.payment_id),
            "source": job.source,
            "errorCode": job.error_code or None,
            "error": job.error or None,
            "createdAt": job.created_at.isoformat(),
            "startedAt": job.started_at.isoformat() if job.started_at else None,
            "finishedAt": job.finished_at.isoformat() if job.finished_at else None,
            "nextAttemptAt": job.next_attempt_at.isoformat() if job.next_attempt_at else None,
        }


def job_status_schema() -> Any:
    """The OpenAPI description of ``JobStatusSerializer``'s answer."""
    return inline_serializer(
        "JobStatus",
        fields={
            "jobId": serializers.UUIDField(),
            "status": serializers.CharField(help_text=_STATUSES),
            "progress": serializers.IntegerField(min_value=0, max_value=100),
            "result": serializers.JSONField(allow_null=True),
            "attemptsMade": serializers.IntegerField(),
            "maxAttempts": serializers.IntegerField(),
            "attempts": inline_serializer(
                "JobAttempt",
                fields={
                    "attempt": serializers.IntegerField(),
                    "outcome": serializers.CharField(help_text=_OUTCOMES),
                    "startedAt": serializers.DateTimeField(),
                    "finishedAt": serializers.DateTimeField(allow_null=True),
                    "durationMs": serializers.IntegerField(allow_null=True),
                    "worker": serializers.CharField(
                        allow_null=True, help_text="Staff only; null for others."
                    ),
                    "errorCode": serializers.CharField(allow_null=True),
                    "error": serializers.CharField(allow_null=True),
                    "transactionHashes": serializers.ListField(child=serializers.CharField()),
                    "gasUsed": serializers.IntegerField(allow_null=True),
                    "feeWei": serializers.CharField(
                        allow_null=True, help_text="Gas paid by the relayer, in wei (a string)."
                    ),
                },
                many=True,
            ),
            "data": serializers.JSONField(help_text="The job's input."),
            "paymentId": serializers.CharField(),
            "source": serializers.CharField(help_text=_SOURCES),
            "errorCode": serializers.CharField(allow_null=True),
            "error": serializers.CharField(allow_null=True),
            "createdAt": serializers.DateTimeField(),
            "startedAt": serializers.DateTimeField(allow_null=True),
            "finishedAt": serializers.DateTimeField(allow_null=True),
            "nextAttemptAt": serializers.DateTimeField(allow_null=True),
        },
    )


class JobSummarySerializer(serializers.Serializer):
    """One entry of GET /api/jobs/subscription/{id}: jobId, status, progress, result, createdAt."""

    jobId = serializers.UUIDField(read_only=True)
    status = serializers.CharField(read_only=True, help_text=_STATUSES)
    progress = serializers.IntegerField(read_only=True, min_value=0, max_value=100)
    result = serializers.JSONField(read_only=True, allow_null=True)
    attemptsMade = serializers.IntegerField(read_only=True)
    errorCode = serializers.CharField(read_only=True, allow_null=True)
    createdAt = serializers.DateTimeField(read_only=True)

    def to_representation(self, job: Job) -> dict[str, Any]:
        return {
            "jobId": str(job.pk),
            "status": job.status,
            "progress": job.progress,
            "result": job_result(job),
            "attemptsMade": job.attempts_made,
            "errorCode": job.error_code or None,
            "createdAt": job.created_at.isoformat(),
        }


class JobsFinishedSerializer(serializers.Serializer):
    """Jobs finished in a window (schema only: ``jobs.selectors.job_stats`` makes it)."""

    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    failureRate = serializers.FloatField(help_text="failed / finished; 0 when none finished.")


class JobsFinishedWindowsSerializer(serializers.Serializer):
    lastHour = JobsFinishedSerializer()
    lastDay = JobsFinishedSerializer()


class JobStatsSerializer(serializers.Serializer):
    """GET /api/jobs/stats (schema only: ``jobs.selectors.job_stats`` makes it)."""

    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Jobs per status.")
    total = serializers.IntegerField()
    queueLength = serializers.IntegerField(
        allow_null=True, help_text="The broker's queue length (staff only, else null)."
    )
    oldestWaitingAt = serializers.DateTimeField(allow_null=True)
    oldestWaitingAgeSeconds = serializers.FloatField(allow_null=True)
    finished = JobsFinishedWindowsSerializer()
