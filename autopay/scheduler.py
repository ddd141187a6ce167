"""The due-payment scan: find due billing periods, create their payments and jobs in bulk.

Work is done in bounded batches with a fixed number of queries per batch (none per
subscription). Every write is idempotent in the database itself: payments are inserted with
ON CONFLICT DO NOTHING on (subscription, period_start) and jobs with ON CONFLICT DO NOTHING on
the one-open-job-per-payment index, so two beat processes, two overlapping scans or a scan
racing a manual trigger can never create a second payment for a period or a second job.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from autopay.queue import publish_jobs
from jobs.models import Job
from subscriptions import periods
from subscriptions.models import Payment, Subscription

logger = logging.getLogger(__name__)

_SUBSCRIPTION_FIELDS = (
    "id",
    "service_name",
    "payer_address",
    "recipient_address",
    "amount",
    "token_address",
    "token_decimals",
    "network",
    "interval_unit",
    "interval_count",
    "billing_anchor",
    "next_period_index",
    "next_period_due_at",
)


@dataclass
class ScanSummary:
    subscriptions: int = 0
    payments_created: int = 0
    jobs_created: int = 0
    jobs_published: int = 0
    dunning_retries: int = 0
    batches: int = 0
    seconds: float = 0.0
    publish_errors: int = field(default=0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def scan_due(
    *,
    now: datetime | None = None,
    batch_size: int | None = None,
    max_periods: int | None = None,
    publish: bool = True,
) -> ScanSummary:
    """Create and publish the jobs of every due billing period (and of due dunning retries)."""
    started = time.perf_counter()
    now = now or timezone.now()
    batch_size = batch_size or settings.AUTOPAY_SCAN_BATCH_SIZE
    max_periods = max_periods or settings.AUTOPAY_SCAN_MAX_PERIODS_PER_SUBSCRIPTION
    summary = ScanSummary()

    last_key: tuple[datetime, int] | None = None
    # Subscriptions that still have due periods after a visit (more missed than the cap):
    # they are not visited twice in one scan.
    visited_still_due: set[int] = set()
    while True:
        queryset = Subscription.objects.filter(
            status=Subscription.Status.ACTIVE,
            auto_pay_enabled=True,
            next_period_due_at__lte=now,
        )
        if last_key is not None:
            queryset = queryset.filter(
                Q(next_period_due_at__gt=last_key[0])
                | Q(next_period_due_at=last_key[0], id__gt=last_key[1])
            )
        rows = list(
            queryset.order_by("next_period_due_at", "id").values(*_SUBSCRIPTION_FIELDS)[:batch_size]
        )
        if not rows:
            break
        last_key = (rows[-1]["next_period_due_at"], rows[-1]["id"])
        rows = [row for row in rows if row["id"] not in visited_still_due]
        job_ids, payments_created, still_due = _schedule_batch(
            rows, now=now, max_periods=max_periods
        )
        visited_still_due.update(still_due)
        summary.batches += 1
        summary.subscriptions += len(rows)
        summary.payments_created += payments_created
        summary.jobs_created += len(job_ids)
        if publish and job_ids:
            summary.jobs_published += _publish(job_ids, summary)

    dunning_job_ids = _schedule_dunning(now=now, batch_size=batch_size)
    summary.dunning_retries = len(dunning_job_ids)
    summary.jobs_created += len(dunning_job_ids)
    if publish and dunning_job_ids:
        summary.jobs_published += _publish(dunning_job_ids, summary)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _publish(job_ids: list[str], summary: ScanSummary) -> int:
    try:
        return publish_jobs(job_ids)
    except Exception:
        # The rows are committed; the recovery task republishes waiting jobs.
        summary.publish_errors += 1
        logger.exception("scan: publishing %d job(s) failed; recovery will republish", len(job_ids))
        return 0


def _due_indices(
    row: dict[str, Any], *, now: datetime, max_periods: int
) -> list[tuple[int, datetime, datetime]]:
    """(index, start, end) of each due period of one subscription, oldest first, capped."""
    due: list[tuple[int, datetime, datetime]] = []
    index = row["next_period_index"]
    start = row["next_period_due_at"]
    while start <= now and len(due) < max_periods:
        end = periods.period_start(
            anchor=row["billing_anchor"],
            unit=row["interval_unit"],
            count=row["interval_count"],
            index=index + 1,
        )
        due.append((index, start, end))
        index, start = index + 1, end
    return due


def _schedule_batch(
    rows: list[dict[str, Any]], *, now: datetime, max_periods: int
) -> tuple[list[str], int, list[int]]:
    """One transaction: insert payments, insert jobs for the new ones, advance cursors."""
    payment_rows: list[tuple[Any, ...]] = []
    cursor_updates: list[tuple[int, int, datetime]] = []
    still_due: list[int] = []
    by_id = {row["id"]: row for row in rows}
    for row in rows:
        due = _due_indices(row, now=now, max_periods=max_periods)
        if not due:
            continue
        for index, start, end in due:
            payment_rows.append(
                (
                    row["id"],
                    index,
                    _db_datetime(start),
                    _db_datetime(end),
                    row["amount"],
                    row["payer_address"],
                    row["recipient_address"],
                    row["token_address"],
                    row["token_decimals"],
                    row["network"],
                    Payment.Status.PENDING,
                    _db_datetime(now),
                    _db_datetime(now),
                )
            )
        next_index, next_due = due[-1][0] + 1, due[-1][2]
        cursor_updates.append((row["id"], next_index, next_due))
        if next_due <= now:
            still_due.append(row["id"])
    if not payment_rows:
        return [], 0, still_due

    with transaction.atomic():
        created = _insert_payments(payment_rows)
        job_rows = []
        for payment_id, subscription_id, period_start in created:
            row = by_id[subscription_id]
            job_rows.append(
                (
                    uuid.uuid4(),
                    subscription_id,
                    payment_id,
                    {
                        "subscriptionId": str(subscription_id),
                        "paymentId": str(payment_id),
                        "userAddress": row["payer_address"],
                        "amount": format(row["amount"].normalize(), "f"),
                        "recipientAddress": row["recipient_address"],
                        "serviceName": row["service_name"],
                        "periodStart": period_start.isoformat(),
                    },
                )
            )
        job_ids = _insert_jobs(job_rows, source=Job.Source.SCHEDULER, now=now)
        _advance_cursors(cursor_updates, now=now)
    return job_ids, len(created), still_due


def _insert_payments(rows: list[tuple[Any, ...]]) -> list[tuple[int, int, datetime]]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: only rows this call created come back."""
    table = Payment._meta.db_table
    columns = (
        "subscription_id, period_index, period_start, period_end, amount, payer_address, "
        "recipient_address, token_address, token_decimals, network, status, "
        "authorization_nonce, transaction_hash, error_code, error_message, created_at, updated_at"
    )
    placeholders = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, '', '', '', '', %s, %s)"
    created: list[tuple[int, int, datetime]] = []
    with connection.cursor() as cursor:
        for chunk in _chunks(rows, 500):
            sql = (
                f"INSERT INTO {table} ({columns}) VALUES "  # noqa: S608 (names from model meta)
                + ", ".join([placeholders] * len(chunk))
                + " ON CONFLICT (subscription_id, period_start) DO NOTHING"
                + " RETURNING id, subscription_id, period_start"
            )
            cursor.execute(sql, [value for row in chunk for value in row])
            for payment_id, subscription_id, period_start in cursor.fetchall():
                if isinstance(period_start, str):  # SQLite returns text in UTC
                    period_start = datetime.fromisoformat(period_start).replace(tzinfo=UTC)
                created.append((payment_id, subscription_id, period_start))
    return created


def _insert_jobs(rows: list[tuple[Any, ...]], *, source: str, now: datetime) -> list[str]:
    """Insert jobs; a payment that already has an open job is skipped by the partial index."""
    if not rows:
        return []
    import json

    table = Job._meta.db_table
    columns = (
        "id, subscription_id, payment_id, source, status, progress, attempts_made, max_attempts, "
        "data, error_code, error, celery_task_id, lease_owner, recoveries, created_at, "
        "enqueued_at, updated_at"
    )
    placeholders = "(%s, %s, %s, %s, 'waiting', 0, 0, %s, %s, '', '', '', '', 0, %s, %s, %s)"
    max_attempts = settings.AUTOPAY_JOB_MAX_ATTEMPTS
    is_postgres = connection.vendor == "postgresql"
    job_ids: list[str] = []
    with connection.cursor() as cursor:
        for chunk in _chunks(rows, 500):
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
                        _db_datetime(now),
                        _db_datetime(now),
                        _db_datetime(now),
                    ]
                )
            sql = (
                f"INSERT INTO {table} ({columns}) VALUES "  # noqa: S608 (names from model meta)
                + ", ".join([placeholders] * len(chunk))
                + " ON CONFLICT DO NOTHING RETURNING id"
            )
            cursor.execute(sql, params)
            job_ids.extend(str(uuid.UUID(str(value))) for (value,) in cursor.fetchall())
    return job_ids


def _advance_cursors(updates: list[tuple[int, int, datetime]], *, now: datetime) -> None:
    """Move each subscription's scheduling cursor forward, never backward."""
    table = Subscription._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for chunk in _chunks(updates, 1000):
                values = ", ".join(["(%s::bigint, %s::integer, %s::timestamptz)"] * len(chunk))
                cursor.execute(
                    f"UPDATE {table} AS s SET next_period_index = v.idx, "  # noqa: S608
                    f"next_period_due_at = v.due, updated_at = %s "
                    f"FROM (VALUES {values}) AS v(id, idx, due) "
                    "WHERE s.id = v.id AND s.next_period_index < v.idx",
                    [now, *[value for row in chunk for value in row]],
                )
        else:
            cursor.executemany(
                f"UPDATE {table} SET next_period_index = %s, "  # noqa: S608
                "next_period_due_at = %s, updated_at = %s "
                "WHERE id = %s AND next_period_index < %s",
                [
                    (index, _db_datetime(due), _db_datetime(now), subscription_id, index)
                    for subscription_id, index, due in updates
                ],
            )


def _schedule_dunning(*, now: datetime, batch_size: int) -> list[str]:
    """Retry the failed payments of past-due subscriptions whose retry time has come.

    The subscription row is claimed with a conditional update first, so two scans cannot both
    retry it; each retry is a new job on the same payment.
    """
    job_ids: list[str] = []
    while True:
        candidates = list(
            Subscription.objects.filter(
                status=Subscription.Status.PAST_DUE,
                auto_pay_enabled=True,
                dunning_next_retry_at__lte=now,
            )
            .order_by("dunning_next_retry_at", "id")
            .values_list("id", flat=True)[:batch_size]
        )
        if not candidates:
            return job_ids
        with transaction.atomic():
            claimed = []
            for subscription_id in candidates:
                # One conditional update per subscription keeps this portable; dunning volume
                # is a small fraction of the due scan.
                if Subscription.objects.filter(
                    pk=subscription_id,
                    status=Subscription.Status.PAST_DUE,
                    dunning_next_retry_at__lte=now,
                ).update(dunning_next_retry_at=None, updated_at=now):
                    claimed.append(subscription_id)
            if claimed:
                from django.db.models import F

                Subscription.objects.filter(pk__in=claimed).update(
                    dunning_attempts=F("dunning_attempts") + 1
                )
                failed = list(
                    Payment.objects.filter(
                        subscription_id__in=claimed, status=Payment.Status.FAILED
                    )
                    .select_related("subscription")
                    .order_by("subscription_id", "period_start")
                )
                Payment.objects.filter(pk__in=[p.pk for p in failed]).update(
                    status=Payment.Status.PENDING, error_code="", error_message="", updated_at=now
                )
                from jobs.services import job_snapshot

                job_ids.extend(
                    _insert_jobs(
                        [(uuid.uuid4(), p.subscription_id, p.pk, job_snapshot(p)) for p in failed],
                        source=Job.Source.DUNNING,
                        now=now,
                    )
                )
        if len(candidates) < batch_size:
            return job_ids


def _db_datetime(value: datetime) -> Any:
    """A datetime as the backend stores it (naive UTC text on SQLite, as is on PostgreSQL)."""
    return connection.ops.adapt_datetimefield_value(value)


def _chunks(items: list[Any], size: int) -> Any:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def due_soon(*, within: timedelta) -> int:
    """How many active auto-pay subscriptions fall due within ``within`` (for dashboards)."""
    return Subscription.objects.filter(
        status=Subscription.Status.ACTIVE,
        auto_pay_enabled=True,
        next_period_due_at__lte=timezone.now() + within,
    ).count()
