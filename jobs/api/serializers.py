"""Job output in the baseline's exact shapes (camelCase, ids and amounts as strings)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from jobs.models import Job


def job_result(job: Job) -> dict[str, Any] | None:
    return job.result or None


class JobStatusSerializer(serializers.Serializer):
    """GET /api/jobs/{jobId}: {status, progress, result, attemptsMade, data, ...}."""

    def to_representation(self, job: Job) -> dict[str, Any]:
        return {
            "jobId": str(job.pk),
            "status": job.status,
            "progress": job.progress,
            "result": job_result(job),
            "attemptsMade": job.attempts_made,
            "maxAttempts": job.max_attempts,
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


class JobSummarySerializer(serializers.Serializer):
    """One entry of GET /api/jobs/subscription/{id}: jobId, status, progress, result, createdAt."""

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
