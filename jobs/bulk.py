"""Jobs written in bulk (the scan and dunning): one INSERT per chunk, raw SQL for speed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection

from config.sql import insert_lists
from jobs.models import Job


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
