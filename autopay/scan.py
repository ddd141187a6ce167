"""The due-payment scan: find due billing periods, create their payments and jobs in bulk.

Work is done in bounded batches with a fixed number of queries per batch (none per
subscription). Each batch is one transaction that first locks its subscriptions with
``SELECT ... FOR NO KEY UPDATE SKIP LOCKED``: a subscription held by someone else (a second
scan from another beat process, a manual trigger, a worker recording a result) is passed over
rather than waited for, so the scan never waits on a lock while holding others (no deadlock),
concurrent scans share the work instead of repeating it, and the rows read are the rows
written. Every write is idempotent in the database as well: payments are inserted with
ON CONFLICT DO NOTHING on (subscription, period_start) and jobs with ON CONFLICT DO NOTHING on
the one-open-job-per-payment index, so a second payment for a period or a second open job for a
payment cannot be created whatever the timing.

On PostgreSQL the writes of a batch (payments, their jobs, the cursors) are one statement
with array parameters bound in binary; other databases (SQLite on a laptop) take a portable
path with a few statements per batch.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from autopay.dunning import dunning_schedule
from core.sql import binary_cursor, insert_lists
from jobs.bulk import chunks, db_datetime, insert_jobs
from jobs.models import Job
from jobs.queue import jobs_mark_unpublished, publish_scheduled_jobs
from jobs.services import job_data
from subscriptions import periods
from subscriptions.models import Payment, Subscription
from subscriptions.webhooks.events import payments_waived_record

logger = logging.getLogger(__name__)


class _DueRow(NamedTuple):
    """The columns of a due subscription that the scan reads."""

    id: int
    service_name: str
    payer_address: str
    recipient_address: str
    amount: Any
    interval_unit: str
    interval_count: int
    billing_anchor: datetime
    next_period_index: int
    next_period_due_at: datetime


class _NewPayment(NamedTuple):
    subscription_id: int
    period_index: int
    period_start: datetime
    period_end: datetime
    # The job's data without paymentId (unknown until the row exists), as JSON text.
    data: str
    # 'pending' (charged: a job is created) or 'waived' (owed while the engine was down,
    # beyond AUTOPAY_MAX_MISSED_PERIODS: recorded, never charged).
    status: str = Payment.Status.PENDING


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
    """Create and publish the jobs of every due billing period (and of due dunning retries).

    Each batch commits before its jobs are published, so a worker never sees a missing row
    (call it outside any transaction); a failed publish is logged and left to the dispatcher,
    which publishes jobs whose message never reached the broker. Safe to run concurrently with
    itself.
    """
    started = time.perf_counter()
    now = now or timezone.now()
    batch_size = batch_size or settings.AUTOPAY_SCAN_BATCH_SIZE
    max_periods = max_periods or settings.AUTOPAY_SCAN_MAX_PERIODS_PER_SUBSCRIPTION
    summary = ScanSummary()

    last_key: tuple[datetime, int] | None = None
    # Subscriptions that still have due periods after a visit (more missed than the cap) sort
    # again further on: they are not visited twice in one scan.
    visited_still_due: set[int] = set()
    # Publishing a committed batch overlaps with writing the next one (the database works in
    # its own process while this one encodes messages).
    publisher = _BackgroundPublisher(summary) if publish else None
    try:
        _scan_batches(
            now=now,
            batch_size=batch_size,
            max_periods=max_periods,
            summary=summary,
            publisher=publisher,
            last_key=last_key,
            visited_still_due=visited_still_due,
        )
    finally:
        if publisher is not None:
            publisher.close()

    dunning_job_ids = dunning_schedule(now=now, batch_size=batch_size)
    summary.dunning_retries = len(dunning_job_ids)
    summary.jobs_created += len(dunning_job_ids)
    if publish and dunning_job_ids:
        summary.jobs_published += _publish(dunning_job_ids, summary)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


class _BackgroundPublisher:
    """Publishes committed batches from one thread, in order, while the scan goes on."""

    def __init__(self, summary: ScanSummary) -> None:
        self._summary = summary
        self._queue: queue.Queue[list[str] | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="scan-publisher", daemon=True)
        self._thread.start()

    def submit(self, job_ids: list[str]) -> None:
        self._queue.put(job_ids)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            job_ids = self._queue.get()
            if job_ids is None:
                return
            self._summary.jobs_published += _publish(job_ids, self._summary)


def _scan_batches(
    *,
    now: datetime,
    batch_size: int,
    max_periods: int,
    summary: ScanSummary,
    publisher: _BackgroundPublisher | None,
    last_key: tuple[datetime, int] | None,
    visited_still_due: set[int],
) -> None:
    while True:
        with transaction.atomic():
            rows = _lock_due_batch(now=now, after=last_key, limit=batch_size)
            if not rows:
                break
            last_key = (rows[-1].next_period_due_at, rows[-1].id)
            rows = [row for row in rows if row.id not in visited_still_due]
            new_payments, cursors, still_due = _plan_batch(rows, now=now, max_periods=max_periods)
            payments_created, job_ids, waived_ids = _write_batch(new_payments, cursors, now=now)
            # payment.waived webhook events, in the batch's transaction (an outbox).
            payments_waived_record(payment_ids=waived_ids)
        visited_still_due.update(still_due)
        summary.batches += 1
        summary.subscriptions += len(rows)
        summary.payments_created += payments_created
        summary.jobs_created += len(job_ids)
        if publisher is not None and job_ids:
            publisher.submit(job_ids)


def _publish(job_ids: list[str], summary: ScanSummary) -> int:
    try:
        # In batches of AUTOPAY_SETTLEMENT_BATCH_SIZE jobs, each settled in one transaction.
        return publish_scheduled_jobs(job_ids)
    except Exception:
        # The rows are committed (queued); the dispatcher publishes them once the broker is back.
        summary.publish_errors += 1
        logger.exception(
            "scan: publishing %d job(s) failed; the dispatcher will publish them", len(job_ids)
        )
        jobs_mark_unpublished(job_ids)
        return 0


def _lock_due_batch(
    *, now: datetime, after: tuple[datetime, int] | None, limit: int
) -> list[_DueRow]:
    """The next batch of due subscriptions in (due time, id) order, locked for this transaction.

    Rows locked by someone else (another scan, a manual trigger, a worker recording a result)
    are skipped; they are still due for the next scan if nobody else charged them meanwhile.
    """
    if connection.vendor == "postgresql":
        return _lock_due_batch_postgresql(now=now, after=after, limit=limit)
    queryset = Subscription.objects.select_for_update(skip_locked=True).filter(
        status=Subscription.Status.ACTIVE,
        auto_pay_enabled=True,
        next_period_due_at__lte=now,
    )
    if after is not None:
        queryset = queryset.filter(
            Q(next_period_due_at__gt=after[0]) | Q(next_period_due_at=after[0], id__gt=after[1])
        )
    values = queryset.order_by("next_period_due_at", "id").values_list(*_DueRow._fields)
    return [_DueRow(*row) for row in values[:limit]]


# The due query on the partial index sub_due_scan_idx (same condition, same column order).
_POSTGRESQL_DUE = """
SELECT {columns} FROM {subscription_table}
WHERE status = 'active' AND auto_pay_enabled AND next_period_due_at <= %(now)b
  AND (next_period_due_at, id) > (%(after_due)b, %(after_id)b)
ORDER BY next_period_due_at, id
LIMIT %(limit)b
FOR NO KEY UPDATE SKIP LOCKED
"""
_BEFORE_ANY = (datetime(1, 1, 1, tzinfo=UTC), 0)


def _lock_due_batch_postgresql(
    *, now: datetime, after: tuple[datetime, int] | None, limit: int
) -> list[_DueRow]:
    sql = _POSTGRESQL_DUE.format(
        columns=", ".join(_DueRow._fields), subscription_table=Subscription._meta.db_table
    )
    after_due, after_id = after or _BEFORE_ANY
    with binary_cursor() as cursor:
        cursor.execute(
            sql, {"now": now, "after_due": after_due, "after_id": after_id, "limit": limit}
        )
        return [_DueRow(*row) for row in cursor.fetchall()]


def _due_periods(
    row: _DueRow, *, now: datetime, max_periods: int
) -> tuple[list[tuple[int, datetime, datetime]], list[tuple[int, datetime, datetime]]]:
    """(index, start, end) of the periods to waive and of those to charge (oldest first,
    at most ``max_periods`` in this visit) of one due subscription."""
    current = periods.period_index_at(
        anchor=row.billing_anchor, unit=row.interval_unit, count=row.interval_count, moment=now
    )
    if current < row.next_period_index:
        return [], []
    waived, charged = periods.missed_period_split(
        next_index=row.next_period_index,
        current_index=current,
        max_missed=settings.AUTOPAY_MAX_MISSED_PERIODS,
    )

    def bounds(index: int) -> tuple[int, datetime, datetime]:
        start, end = (
            periods.period_start(
                anchor=row.billing_anchor,
                unit=row.interval_unit,
                count=row.interval_count,
                index=position,
            )
            for position in (index, index + 1)
        )
        return index, start, end

    return [bounds(index) for index in waived], [bounds(index) for index in charged[:max_periods]]


def _plan_batch(
    rows: list[_DueRow], *, now: datetime, max_periods: int
) -> tuple[list[_NewPayment], list[tuple[int, int, datetime]], list[int]]:
    """The payments to create, the new cursors and the subscriptions still due afterwards."""
    new_payments: list[_NewPayment] = []
    cursors: list[tuple[int, int, datetime]] = []
    still_due: list[int] = []
    for row in rows:
        waived, due = _due_periods(row, now=now, max_periods=max_periods)
        if not due:
            continue
        for index, start, end in waived:
            new_payments.append(_NewPayment(row.id, index, start, end, "{}", Payment.Status.WAIVED))
        for index, start, end in due:
            # paymentId is added once the payment row exists.
            data = json.dumps(
                job_data(
                    subscription_id=row.id,
                    payment_id=None,
                    payer_address=row.payer_address,
                    amount=row.amount,
                    recipient_address=row.recipient_address,
                    service_name=row.service_name,
                    period_start=start,
                )
            )
            new_payments.append(_NewPayment(row.id, index, start, end, data))
        next_index, next_due = due[-1][0] + 1, due[-1][2]
        cursors.append((row.id, next_index, next_due))
        if next_due <= now:
            still_due.append(row.id)
    return new_payments, cursors, still_due


def _write_batch(
    new_payments: list[_NewPayment], cursors: list[tuple[int, int, datetime]], *, now: datetime
) -> tuple[int, list[str], list[int]]:
    """Insert the payments, a job for each payment created, and advance the cursors. Returns
    how many payments were created, the new jobs' ids and the ids of the waived payments."""
    if not new_payments:
        return 0, [], []
    if connection.vendor == "postgresql":
        return _write_batch_postgresql(new_payments, cursors, now=now)
    return _write_batch_portable(new_payments, cursors, now=now)


# The columns the scan sets; every other column of Payment and Job takes its default.
def _payment_values(*, wanted: str, now: str) -> dict[str, str]:
    return {
        "subscription_id": f"{wanted}.subscription_id",
        "period_index": f"{wanted}.period_index",
        "period_start": f"{wanted}.period_start",
        "period_end": f"{wanted}.period_end",
        "amount": "s.amount",
        "payer_address": "s.payer_address",
        "wallet_id": "s.wallet_id",
        "recipient_address": "s.recipient_address",
        "token_address": "s.token_address",
        "token_decimals": "s.token_decimals",
        "network": "s.network",
        "status": f"{wanted}.status",
        "created_at": now,
        "updated_at": now,
    }


_PAYMENT_COLUMNS, _PAYMENT_VALUES = insert_lists(
    Payment, _payment_values(wanted="wanted", now="%(now)b")
)
# The portable path binds "now" positionally, once per timestamp column, after the rows.
_, _PAYMENT_VALUES_PORTABLE = insert_lists(Payment, _payment_values(wanted="w", now="%s"))
_JOB_COLUMNS, _JOB_VALUES = insert_lists(
    Job,
    {
        "id": "gen_random_uuid()",
        "subscription_id": "p.subscription_id",
        "payment_id": "p.id",
        "source": "%(source)b",
        "max_attempts": "%(max_attempts)b",
        "data": "wanted.data::jsonb || jsonb_build_object('paymentId', p.id::text)",
        "created_at": "%(now)b",
        "enqueued_at": "%(now)b",
        "updated_at": "%(now)b",
    },
)

# Column lists and expressions come from the models and this module, never from input.
_POSTGRESQL_BATCH = f"""
WITH wanted AS (
    SELECT * FROM unnest(
        %(subscription_ids)b::bigint[], %(indexes)b::integer[],
        %(starts)b::timestamptz[], %(ends)b::timestamptz[], %(data)b::text[],
        %(statuses)b::text[]
    ) AS wanted(subscription_id, period_index, period_start, period_end, data, status)
),
new_payments AS (
    INSERT INTO {{payment_table}} ({_PAYMENT_COLUMNS})
    SELECT {_PAYMENT_VALUES}
    FROM wanted JOIN {{subscription_table}} AS s ON s.id = wanted.subscription_id
    ORDER BY wanted.subscription_id, wanted.period_index
    ON CONFLICT (subscription_id, period_start) DO NOTHING
    RETURNING id, subscription_id, period_start, status
),
new_jobs AS (
    INSERT INTO {{job_table}} ({_JOB_COLUMNS})
    SELECT {_JOB_VALUES}
    FROM new_payments AS p
    JOIN wanted ON wanted.subscription_id = p.subscription_id
               AND wanted.period_start = p.period_start
    WHERE p.status = 'pending'
    ORDER BY p.id
    ON CONFLICT DO NOTHING
    RETURNING id
),
moved AS (
    UPDATE {{subscription_table}} AS s
    SET next_period_index = c.next_index, next_period_due_at = c.next_due, updated_at = %(now)b
    FROM unnest(
        %(cursor_ids)b::bigint[], %(cursor_indexes)b::integer[], %(cursor_dues)b::timestamptz[]
    ) AS c(id, next_index, next_due)
    WHERE s.id = c.id AND s.next_period_index < c.next_index
)
SELECT (SELECT count(*) FROM new_payments), (SELECT array_agg(id::text) FROM new_jobs),
       (SELECT array_agg(id) FROM new_payments WHERE status = 'waived')
"""  # noqa: S608


def _write_batch_postgresql(
    new_payments: list[_NewPayment], cursors: list[tuple[int, int, datetime]], *, now: datetime
) -> tuple[int, list[str], list[int]]:
    """One statement, one round trip: payments, their jobs (from RETURNING) and cursors."""
    sql = _POSTGRESQL_BATCH.format(
        payment_table=Payment._meta.db_table,
        job_table=Job._meta.db_table,
        subscription_table=Subscription._meta.db_table,
    )
    subscription_ids, indexes, starts, ends, data, statuses = zip(*new_payments, strict=True)
    cursor_ids, cursor_indexes, cursor_dues = zip(*cursors, strict=True)
    with binary_cursor() as cursor:
        cursor.execute(
            sql,
            {
                "subscription_ids": list(subscription_ids),
                "indexes": list(indexes),
                "starts": list(starts),
                "ends": list(ends),
                "data": list(data),
                "statuses": list(statuses),
                "now": now,
                "source": Job.Source.SCHEDULER,
                "max_attempts": settings.AUTOPAY_JOB_MAX_ATTEMPTS,
                "cursor_ids": list(cursor_ids),
                "cursor_indexes": list(cursor_indexes),
                "cursor_dues": list(cursor_dues),
            },
        )
        payments_created, job_ids, waived_ids = cursor.fetchone()
    return int(payments_created), list(job_ids or []), list(waived_ids or [])


def _write_batch_portable(
    new_payments: list[_NewPayment], cursors: list[tuple[int, int, datetime]], *, now: datetime
) -> tuple[int, list[str], list[int]]:
    """The same writes in a few statements per batch, for databases other than PostgreSQL."""
    wanted = {(p.subscription_id, p.period_start): p for p in new_payments}
    created = _insert_payments(new_payments, now=now)
    job_rows = []
    waived_ids = []
    for payment_id, subscription_id, period_start in created:
        planned = wanted[(subscription_id, period_start)]
        if planned.status != Payment.Status.PENDING:
            waived_ids.append(payment_id)
            continue
        data = json.loads(planned.data)
        data["paymentId"] = str(payment_id)
        job_rows.append((uuid.uuid4(), subscription_id, payment_id, data))
    job_ids = insert_jobs(job_rows, source=Job.Source.SCHEDULER, now=now)
    _advance_cursors(cursors, now=now)
    return len(created), job_ids, waived_ids


def _insert_payments(
    new_payments: list[_NewPayment], *, now: datetime
) -> list[tuple[int, int, datetime]]:
    """INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING: only rows created come back."""
    payment_table = Payment._meta.db_table
    subscription_table = Subscription._meta.db_table
    created: list[tuple[int, int, datetime]] = []
    with connection.cursor() as cursor:
        for chunk in chunks(new_payments, 200):
            values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
            sql = (
                # Names come from model meta, values are parameters.
                "WITH wanted(subscription_id, period_index, period_start, period_end, seq, "  # noqa: S608
                f"status) AS "
                f"(VALUES {values}) "
                f"INSERT INTO {payment_table} ({_PAYMENT_COLUMNS}) "
                f"SELECT {_PAYMENT_VALUES_PORTABLE} "
                f"FROM wanted AS w JOIN {subscription_table} AS s ON s.id = w.subscription_id "
                "WHERE true ORDER BY w.seq "
                "ON CONFLICT (subscription_id, period_start) DO NOTHING "
                "RETURNING id, subscription_id, period_start"
            )
            params: list[Any] = []
            for seq, payment in enumerate(chunk):
                params.extend(
                    [
                        payment.subscription_id,
                        payment.period_index,
                        db_datetime(payment.period_start),
                        db_datetime(payment.period_end),
                        seq,
                        payment.status,
                    ]
                )
            params.extend([db_datetime(now), db_datetime(now)])
            cursor.execute(sql, params)
            for payment_id, subscription_id, period_start in cursor.fetchall():
                created.append((payment_id, subscription_id, _aware(period_start)))
    return created


def _advance_cursors(updates: list[tuple[int, int, datetime]], *, now: datetime) -> None:
    """Move each subscription's scheduling cursor forward, never backward."""
    table = Subscription._meta.db_table
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {table} SET next_period_index = %s, "  # noqa: S608
            "next_period_due_at = %s, updated_at = %s "
            "WHERE id = %s AND next_period_index < %s",
            [
                (index, db_datetime(due), db_datetime(now), subscription_id, index)
                for subscription_id, index, due in updates
            ],
        )


def _aware(value: datetime | str) -> datetime:
    """A datetime read back by a raw query: SQLite gives naive UTC (or text), PostgreSQL aware."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def due_soon(*, within: timedelta) -> int:
    """How many active auto-pay subscriptions fall due within ``within`` (for dashboards)."""
    return Subscription.objects.filter(
        status=Subscription.Status.ACTIVE,
        auto_pay_enabled=True,
        next_period_due_at__lte=timezone.now() + within,
    ).count()
