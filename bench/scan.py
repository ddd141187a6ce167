"""Benchmark of the due-payment scan on PostgreSQL and Redis, against a naive loop.

    .venv/bin/python bench/scan.py [--sizes 10000,100000] [--naive-sample 10000] [--heap]

For each N it bulk-loads N due subscriptions (one due period each) into the database
``autopay_bench`` (created and migrated if missing), then:

1. times ``scan_due(publish=True)``: payments and jobs created in bulk, one message per job
   published to Redis (the queue list is deleted afterwards), peak memory sampled meanwhile;
2. resets (payments and jobs truncated, cursors put back) and times ``scan_due(publish=False)``
   to show the share of publishing, then two such scans started together (as two beat
   processes would), checking that each period is still charged exactly once;
3. resets and times a naive loop on the same data: per subscription one SELECT, one Payment
   INSERT, one Job INSERT, one cursor UPDATE (needed for the same correctness) in one
   transaction, then one publish. Above ``--naive-sample`` subscriptions it runs on a sample of
   that size and the rate is extrapolated (marked ``*``). ``--heap`` adds a tracemalloc run.

Finally it compares publishing rates: jobs.queue.publish_jobs as it is, and the same
send_task loop inside kombu's Producer.batch() (Redis pipelining), on --publish-sample ids.

Environment defaults (an existing variable wins): DATABASE_URL, REDIS_URL (db 14),
DJANGO_SECRET_KEY, CELERY_QUEUE=autopay-bench, AUTOPAY_SETTLEMENT_BATCH_SIZE=1.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DEFAULT_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/autopay_bench",
    "REDIS_URL": "redis://127.0.0.1:6379/14",
    "DJANGO_SECRET_KEY": "bench",
    "CELERY_QUEUE": "autopay-bench",
    "LOG_LEVEL": "WARNING",
    # One message per job, as when these figures were first taken (batches of 200 publish
    # 200 times fewer messages; bench/settle.py measures that path end to end).
    "AUTOPAY_SETTLEMENT_BATCH_SIZE": "1",
}
for _name, _value in DEFAULT_ENV.items():
    os.environ.setdefault(_name, _value)


def ensure_database() -> None:
    """Create the benchmark database if it does not exist (before Django connects)."""
    import environ
    import psycopg

    config = environ.Env.db_url_config(os.environ["DATABASE_URL"])
    name = config["NAME"]
    admin = psycopg.connect(
        host=config.get("HOST") or "127.0.0.1",
        port=int(config.get("PORT") or 5432),
        user=config.get("USER") or "postgres",
        password=config.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    )
    with admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def setup_django() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


# --- data -------------------------------------------------------------------------------------


def _address(seed: int) -> str:
    return "0x" + f"{seed:040x}"


def load_subscriptions(count: int, *, now: datetime) -> None:
    """COPY ``count`` active monthly subscriptions, each with exactly one due period."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from jobs.models import Job
    from subscriptions.models import Payment, Subscription

    owner, _ = get_user_model().objects.get_or_create(username="bench")
    with connection.cursor() as cursor:
        cursor.execute(
            f"TRUNCATE {Job._meta.db_table}, {Payment._meta.db_table}, "
            f"{Subscription._meta.db_table} RESTART IDENTITY CASCADE"
        )
    fields = [field for field in Subscription._meta.concrete_fields if not field.primary_key]
    columns = ", ".join(str(field.column) for field in fields)
    token = _address(0xDEAD)

    def rows() -> Iterator[tuple[Any, ...]]:
        for number in range(count):
            # Anchors spread over the last 20 days: one period each has started.
            anchor = now - timedelta(seconds=60 + (number * 17) % (20 * 86400))
            values = {
                "owner_id": owner.pk,
                "service_name": f"Service {number % 500}",
                "payer_address": _address(2 * number + 1),
                "recipient_address": _address(2 * number + 2),
                "wallet_id": None,
                "amount": Decimal("9.99"),
                "token_address": token,
                "token_decimals": 6,
                "network": "eip155:31337",
                "interval_unit": "month",
                "interval_count": 1,
                "billing_anchor": anchor,
                "next_payment_due_at": anchor,
                "next_period_index": 0,
                "next_period_due_at": anchor,
                "auto_pay_enabled": True,
                "status": "active",
                "dunning_attempts": 0,
                "dunning_next_retry_at": None,
                "created_at": now,
                "updated_at": now,
                "paused_at": None,
                "canceled_at": None,
            }
            # Any other column (added later) takes its model default.
            yield tuple(values.get(field.attname, field.get_default()) for field in fields)

    connection.ensure_connection()
    # Django's connection is in autocommit mode: the COPY commits on its own.
    with connection.connection.cursor() as cursor:
        table = Subscription._meta.db_table
        with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows():
                copy.write_row(row)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Subscription._meta.db_table}")


def reset_schedule() -> None:
    """Remove payments and jobs and put every subscription's cursor back to its first period."""
    from django.db import connection

    from jobs.models import Job
    from subscriptions.models import Payment, Subscription

    with connection.cursor() as cursor:
        # CASCADE: the attempts ledger, pre-signed authorizations and the like point at these
        # tables, and the benchmark's database holds nothing else worth keeping.
        cursor.execute(f"TRUNCATE {Job._meta.db_table}, {Payment._meta.db_table} CASCADE")
        cursor.execute(
            f"UPDATE {Subscription._meta.db_table} SET next_period_index = 0, "
            "next_period_due_at = billing_anchor, next_payment_due_at = billing_anchor"
        )
        cursor.execute(f"VACUUM ANALYZE {Subscription._meta.db_table}")


def row_counts() -> tuple[int, int]:
    from jobs.models import Job
    from subscriptions.models import Payment

    return Payment.objects.count(), Job.objects.count()


# --- measuring --------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's resident memory every few milliseconds while running."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.baseline = self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def naive_loop(*, now: datetime, limit: int) -> int:
    """The straightforward implementation the scan is compared with, one subscription a time."""
    from django.conf import settings
    from django.db import transaction

    from jobs.models import Job
    from jobs.queue import publish_jobs
    from subscriptions import periods
    from subscriptions.models import Payment, Subscription

    due_ids = list(
        Subscription.objects.filter(
            status=Subscription.Status.ACTIVE,
            auto_pay_enabled=True,
            next_period_due_at__lte=now,
        )
        .order_by("next_period_due_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    published = 0
    for subscription_id in due_ids:
        with transaction.atomic():
            subscription = Subscription.objects.select_for_update().get(pk=subscription_id)
            index = subscription.next_period_index
            start = subscription.next_period_due_at
            end = periods.period_start(
                anchor=subscription.billing_anchor,
                unit=subscription.interval_unit,
                count=subscription.interval_count,
                index=index + 1,
            )
            payment = Payment.objects.create(
                subscription=subscription,
                period_index=index,
                period_start=start,
                period_end=end,
                amount=subscription.amount,
                payer_address=subscription.payer_address,
                recipient_address=subscription.recipient_address,
                token_address=subscription.token_address,
                token_decimals=subscription.token_decimals,
                network=subscription.network,
            )
            job = Job.objects.create(
                subscription=subscription,
                payment=payment,
                max_attempts=settings.AUTOPAY_JOB_MAX_ATTEMPTS,
                enqueued_at=now,
                data={
                    "subscriptionId": str(subscription.pk),
                    "paymentId": str(payment.pk),
                    "userAddress": subscription.payer_address,
                    "amount": format(subscription.amount.normalize(), "f"),
                    "recipientAddress": subscription.recipient_address,
                    "serviceName": subscription.service_name,
                    "periodStart": start.isoformat(),
                },
            )
            Subscription.objects.filter(pk=subscription.pk).update(
                next_period_index=index + 1, next_period_due_at=end
            )
        published += publish_jobs([job.pk])
    return published


def publish_comparison(count: int) -> tuple[float, float]:
    """Messages per second through jobs.queue.publish_jobs, and through the same send_task
    loop inside kombu's ``Producer.batch()`` (one Redis pipeline per 1,000 messages): the
    change suggested for publish_jobs, measured here without editing it."""
    from config.celery import app
    from jobs.queue import payment_task_names, publish_jobs

    process_task, _ = payment_task_names()
    job_ids = [str(uuid.uuid4()) for _ in range(count)]
    publish_jobs(job_ids[:10])  # warm the producer pool
    drain_queue()
    plain_seconds, _ = timed(lambda: publish_jobs(job_ids))
    assert drain_queue() == count

    def batched() -> None:
        with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
            for job_id in job_ids:
                app.send_task(process_task, args=[job_id], producer=producer)

    batched_seconds, _ = timed(batched)
    assert drain_queue() == count
    return count / plain_seconds, count / batched_seconds


def concurrent_scans(count: int, *, now: datetime) -> list[Any]:
    """``count`` scans without publishing, started together, each on its own connection."""
    from django.db import connection

    from autopay.scan import scan_due

    barrier = threading.Barrier(count)
    summaries: list[Any] = []
    errors: list[BaseException] = []

    def scan() -> None:
        try:
            barrier.wait()
            summaries.append(scan_due(now=now, publish=False))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=scan) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return summaries


def process_scans(count: int) -> float:
    """Wall time of ``count`` scans with publishing in separate processes started together,
    as the beat task runs them (AUTOPAY_SCAN_PARALLELISM): they share rows via SKIP LOCKED.
    Each process is warmed up (Django loaded) before the clock starts."""
    import subprocess
    import sys

    from django.db import connection

    connection.close()
    code = (
        "import sys, django; django.setup(); from autopay.scan import scan_due; "
        "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.readline(); "
        "s = scan_due(); print(s.payments_created)"
    )
    repo = Path(__file__).resolve().parent.parent
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=repo,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate()[0] for process in processes]
    elapsed = time.perf_counter() - started
    assert all(process.returncode == 0 for process in processes), outputs
    return elapsed


def warm_up() -> None:
    """One small scan first, so that imports and connection pools are not counted in N=10k."""
    from autopay.scan import scan_due

    now = datetime.now(UTC)
    load_subscriptions(100, now=now)
    scan_due(now=now, publish=True)
    drain_queue()


def drain_queue() -> int:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    # Single-job messages on the queue's own list, batch messages on their priority list.
    names = [queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9))]
    length = sum(int(client.llen(name)) for name in names)
    client.delete(*names)
    return length


# --- main -------------------------------------------------------------------------------------


def run(size: int, *, naive_sample: int, heap: bool) -> dict[str, Any]:
    from autopay.scan import scan_due

    now = datetime.now(UTC)
    load_seconds, _ = timed(lambda: load_subscriptions(size, now=now))
    drain_queue()

    with PeakRss() as rss:
        scan_seconds, summary = timed(lambda: scan_due(now=now, publish=True))
    payments, jobs = row_counts()
    queued = drain_queue()
    assert payments == jobs == size, (payments, jobs, size)
    assert summary.jobs_published == size, summary
    if queued != size:
        print(
            f"warning: {queued} of {size} messages found in the queue (another process "
            "consumed or flushed this Redis database?)"
        )

    reset_schedule()
    db_seconds, db_summary = timed(lambda: scan_due(now=now, publish=False))
    assert db_summary.payments_created == size

    # Two scans at once (as two beat processes would run them) share the work through
    # SKIP LOCKED; each period must still be charged exactly once.
    reset_schedule()
    parallel_seconds, summaries = timed(lambda: concurrent_scans(2, now=now))
    assert sum(part.payments_created for part in summaries) == size
    assert row_counts() == (size, size)

    reset_schedule()
    drain_queue()
    procs_seconds = process_scans(2)
    assert row_counts() == (size, size)
    assert drain_queue() == size

    heap_mb = None
    if heap:
        reset_schedule()
        tracemalloc.start()
        scan_due(now=now, publish=False)
        heap_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    reset_schedule()
    sample = min(size, naive_sample)
    naive_seconds, naive_published = timed(lambda: naive_loop(now=now, limit=sample))
    assert naive_published == sample
    assert row_counts() == (sample, sample)
    drain_queue()
    reset_schedule()

    scan_rate = size / scan_seconds
    naive_rate = sample / naive_seconds
    return {
        "n": size,
        "load_s": load_seconds,
        "scan_s": scan_seconds,
        "rate": scan_rate,
        "db_s": db_seconds,
        "parallel_s": parallel_seconds,
        "procs_s": procs_seconds,
        "peak_mb": rss.delta_mb,
        "heap_mb": heap_mb,
        "payments": payments,
        "jobs": jobs,
        "published": queued,
        "naive_rate": naive_rate,
        "naive_sampled": sample < size,
        "speedup": scan_rate / naive_rate,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'N':>7} {'scan s':>7} {'subs/s':>7} {'peak MB':>8} {'payments':>8} {'jobs':>7} "
        f"{'published':>9} {'naive subs/s':>12} {'speedup':>7} | {'db-only s':>9} "
        f"{'2 scans s':>9} {'2 procs s':>9} {'2p subs/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        naive = f"{row['naive_rate']:.0f}{'*' if row['naive_sampled'] else ''}"
        print(
            f"{row['n']:>7} {row['scan_s']:>7.2f} {row['rate']:>7.0f} {row['peak_mb']:>8.1f} "
            f"{row['payments']:>8} {row['jobs']:>7} {row['published']:>9} {naive:>12} "
            f"{row['speedup']:>6.1f}x | {row['db_s']:>9.2f} {row['parallel_s']:>9.2f} "
            f"{row['procs_s']:>9.2f} {row['n'] / row['procs_s']:>9.0f}"
        )
    print("scan s: scan_due(publish=True) wall time; subs/s and speedup from it (naive also")
    print("  publishes). db-only s: scan_due(publish=False); 2 scans s: two concurrent")
    print("  scan_due(publish=False) on the same data (each period still charged once).")
    print("2 procs s: two scan_due(publish=True) in separate processes started together, as")
    print("  the beat task runs them with AUTOPAY_SCAN_PARALLELISM=2 (the production path).")
    if any(row["naive_sampled"] for row in results):
        print("* naive rate measured on a sample (--naive-sample) and assumed constant for all N")
    print("peak MB: resident-memory growth during scan_due(publish=True), sampled every 5 ms")
    if any(row["heap_mb"] is not None for row in results):
        print("Python heap peak (tracemalloc, scan_due(publish=False)): ", end="")
        print(", ".join(f"N={row['n']}: {row['heap_mb']:.1f} MB" for row in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--naive-sample", type=int, default=10000)
    parser.add_argument("--publish-sample", type=int, default=10000)
    parser.add_argument("--heap", action="store_true", help="also measure the tracemalloc peak")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size]

    ensure_database()
    setup_django()
    from django.conf import settings

    print(
        f"database {settings.DATABASES['default']['NAME']}, "
        f"queue {settings.CELERY_TASK_DEFAULT_QUEUE} on {settings.REDIS_URL}, "
        f"batch {settings.AUTOPAY_SCAN_BATCH_SIZE}, {os.cpu_count()} CPUs"
    )
    warm_up()
    results = []
    for size in sizes:
        result = run(size, naive_sample=args.naive_sample, heap=args.heap)
        print(
            f"N={size}: loaded in {result['load_s']:.1f}s, scan {result['scan_s']:.2f}s "
            f"(db only {result['db_s']:.2f}s, two concurrent scans {result['parallel_s']:.2f}s)",
            flush=True,
        )
        results.append(result)
    publish_rate, batched_rate = publish_comparison(args.publish_sample)
    print()
    print_table(results)
    print(
        f"publishing {args.publish_sample} messages: publish_jobs {publish_rate:.0f}/s, "
        f"same send_task loop in kombu Producer.batch() {batched_rate:.0f}/s"
    )


if __name__ == "__main__":
    main()
