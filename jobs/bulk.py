"""Jobs written in bulk: inserted by the scan and dunning (one INSERT per chunk), claimed,
advanced and completed by batch settlement (one statement per step for the whole batch). The
conditions are those of the single-job services: only one worker can claim a job, and only
the lease holder can move it on."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core.sql import binary_cursor, insert_lists
from jobs.models import Job, JobAttempt
from jobs.services import AttemptReport


def db_datetime(value: datetime) -> Any:
    """A datetime as the backend stores it (naive UTC text on SQLite, as is on PostgreSQL)."""
    return connection.ops.adapt_datetimefield_value(value)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# The values a bulk insert binds, in column order; every other column takes its default.
_JOB_COLUMNS, _JOB_VALUES = insert_lists(
    Job,
    {
        column: "%s"
        for column in (
            "id",
            "subscription_id",
            "payment_id",
            "source",
            "max_attempts",
            "data",
            "created_at",
            "enqueued_at",
            "updated_at",
        )
    },
)


def insert_jobs(rows: list[tuple[Any, ...]], *, source: str, now: datetime) -> list[str]:
    """Insert jobs; a payment that already has an open job is skipped by the partial index."""
    if not rows:
        return []
    table = Job._meta.db_table
    max_attempts = settings.AUTOPAY_JOB_MAX_ATTEMPTS
    is_postgres = connection.vendor == "postgresql"
    job_ids: list[str] = []
    with connection.cursor() as cursor:
        for chunk in chunks(rows, 500):
            params: list[Any] = []
            for job_id, subscription_id, payment_id, data in chunk:
                params.extend(
                    [
                        job_id if is_postgres else job_id.hex,
                        subscription_id,
                        payment_id,
                        source,
                        max_attempts,
                        json.dumps(data),
                        db_datetime(now),
                        db_datetime(now),
                        db_datetime(now),
                    ]
                )
            sql = (
                f"INSERT INTO {table} ({_JOB_COLUMNS}) VALUES "  # noqa: S608 (names from model meta)
                + ", ".join([f"({_JOB_VALUES})"] * len(chunk))
                + " ON CONFLICT DO NOTHING RETURNING id"
            )
            cursor.execute(sql, params)
            job_ids.extend(str(uuid.UUID(str(value))) for (value,) in cursor.fetchall())
    return job_ids


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker now holds (status active, its lease)."""

    id: str
    payment_id: int
    attempts_made: int
    max_attempts: int


def _id_list(job_ids: Sequence[Any]) -> tuple[str, list[Any]]:
    """``IN (...)`` placeholders and parameters for job ids, as the backend stores uuids."""
    ids = list(dict.fromkeys(uuid.UUID(str(job_id)) for job_id in job_ids))
    values = ids if connection.vendor == "postgresql" else [job_id.hex for job_id in ids]
    return ", ".join(["%s"] * len(values)), values


def jobs_claim(*, job_ids: Sequence[Any], worker_id: str) -> list[ClaimedJob]:
    """Claim, in one statement, every job of ``job_ids`` that ``job_claim`` would let this
    worker claim (waiting or delayed, retry time come, attempts left): each becomes active
    with this worker's lease and one more attempt. Jobs another worker holds or finished are
    left out, so overlapping or duplicate batches never share a job."""
    if not job_ids:
        return []
    now = timezone.now()
    placeholders, ids = _id_list(job_ids)
    lease = now + timedelta(seconds=settings.AUTOPAY_JOB_LEASE_SECONDS)
    sql = (
        f"UPDATE {Job._meta.db_table} SET status = %s, lease_owner = %s, "  # noqa: S608 (names from model meta)
        "lease_expires_at = %s, attempts_made = attempts_made + 1, "
        "started_at = COALESCE(started_at, %s), next_attempt_at = NULL, updated_at = %s "
        f"WHERE id IN ({placeholders}) AND status IN (%s, %s) "
        "AND attempts_made < max_attempts "
        "AND (next_attempt_at IS NULL OR next_attempt_at <= %s) "
        "RETURNING id, payment_id, attempts_made, max_attempts"
    )
    params = [
        Job.Status.ACTIVE,
        worker_id,
        db_datetime(lease),
        db_datetime(now),
        db_datetime(now),
        *ids,
        Job.Status.WAITING,
        Job.Status.DELAYED,
        db_datetime(now + timedelta(seconds=1)),
    ]
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        # Each claim opens its attempt in the ledger, as the per-job claim does.
        JobAttempt.objects.bulk_create(
            [
                JobAttempt(
                    job_id=uuid.UUID(str(job_id)),
                    number=attempts,
                    worker=worker_id,
                    started_at=now,
                )
                for job_id, _payment_id, attempts, _max_attempts in rows
            ]
        )
    claimed = {
        str(uuid.UUID(str(job_id))): ClaimedJob(
            str(uuid.UUID(str(job_id))), payment_id, attempts, max_attempts
        )
        for job_id, payment_id, attempts, max_attempts in rows
    }
    # In the order asked for: the batch settles (and logs) in its message's order.
    return [
        claimed[key]
        for key in dict.fromkeys(str(uuid.UUID(str(i))) for i in job_ids)
        if key in claimed
    ]


def jobs_held(*, job_ids: Sequence[Any], worker_id: str) -> set[str]:
    """Which of ``job_ids`` this worker still holds (active, its lease)."""
    return {
        str(job_id)
        for job_id in Job.objects.filter(
            pk__in=list(job_ids), status=Job.Status.ACTIVE, lease_owner=worker_id
        ).values_list("pk", flat=True)
    }


def jobs_progress(
    *, job_ids: Sequence[Any], worker_id: str, progress: int, extend_lease: bool = True
) -> set[str]:
    """``job_progress`` for many jobs in one statement: record progress (and extend the lease)
    of those this worker still holds; returns their ids (the others were taken back).

    ``extend_lease=False`` for a step right after the claim, whose lease is still fresh: the
    row then changes no indexed column, and PostgreSQL can update it in place (HOT).
    """
    ids = list(dict.fromkeys(str(job_id) for job_id in job_ids))
    if not ids:
        return set()
    now = timezone.now()
    lease = (
        {"lease_expires_at": now + timedelta(seconds=settings.AUTOPAY_JOB_LEASE_SECONDS)}
        if extend_lease
        else {}
    )
    updated = Job.objects.filter(
        pk__in=ids, status=Job.Status.ACTIVE, lease_owner=worker_id
    ).update(progress=progress, updated_at=now, **lease)
    if updated == len(ids):
        return set(ids)
    return jobs_held(job_ids=ids, worker_id=worker_id)


def jobs_complete(
    *,
    results: dict[str, dict[str, Any]],
    worker_id: str,
    report: AttemptReport | None = None,
) -> set[str]:
    """``job_complete`` for many jobs, each with its own result, in one statement on
    PostgreSQL, and their attempts closed as completed (with ``report``, the transaction and
    each job's share of its gas and fee); returns the ids completed (those this worker still
    held)."""
    if not results:
        return set()
    with transaction.atomic():
        completed = _jobs_complete(results=results, worker_id=worker_id)
        fields: dict[str, Any] = {}
        if report is not None:
            fields = {
                "transaction_hashes": list(report.transaction_hashes),
                "gas_used": report.gas_used,
                "fee_wei": report.fee_wei,
            }
        JobAttempt.objects.filter(
            job_id__in=list(completed), worker=worker_id, finished_at__isnull=True
        ).update(
            outcome=JobAttempt.Outcome.COMPLETED,
            finished_at=timezone.now(),
            error_code="",
            error_message="",
            **fields,
        )
    return completed


def _jobs_complete(*, results: dict[str, dict[str, Any]], worker_id: str) -> set[str]:
    now = timezone.now()
    table = Job._meta.db_table
    if connection.vendor == "postgresql":
        sql = (
            f"UPDATE {table} AS job SET status = %b, progress = 100, "  # noqa: S608 (names from model meta)
            "result = v.result::jsonb, error_code = '', error = '', finished_at = %b, "
            "lease_owner = '', lease_expires_at = NULL, updated_at = %b "
            "FROM unnest(%b::uuid[], %b::text[]) AS v(id, result) "
            "WHERE job.id = v.id AND job.status = %b AND job.lease_owner = %b "
            "RETURNING job.id"
        )
        ids = [uuid.UUID(job_id) for job_id in results]
        texts = [json.dumps(result) for result in results.values()]
        with binary_cursor() as cursor:
            cursor.execute(
                sql, [Job.Status.COMPLETED, now, now, ids, texts, Job.Status.ACTIVE, worker_id]
            )
            return {str(row[0]) for row in cursor.fetchall()}
    completed = set()
    for job_id, result in results.items():
        if Job.objects.filter(pk=job_id, status=Job.Status.ACTIVE, lease_owner=worker_id).update(
            status=Job.Status.COMPLETED,
            progress=100,
            result=result,
            error_code="",
            error="",
            finished_at=now,
            lease_owner="",
            lease_expires_at=None,
            updated_at=now,
        ):
            completed.add(job_id)
    return completed
