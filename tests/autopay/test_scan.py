"""The due-payment scan and the dunning schedule, against the real PostgreSQL and Redis.

Scans are called with ``publish=False`` except where publishing is the subject; concurrency is
tested with threads (one database connection each) and with separate processes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from autopay.scan import ScanSummary, scan_due
from jobs.models import Job
from jobs.services import job_fail, job_snapshot, payment_trigger
from subscriptions import services
from subscriptions.models import Payment, Subscription
from tests.factories import SubscriptionFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def _charge_every_missed_period(settings: Any) -> None:
    # These tests are about the scan's mechanics over many owed periods; the waiver of old
    # missed periods (AUTOPAY_MAX_MISSED_PERIODS) is tested in test_missed_periods.py.
    settings.AUTOPAY_MAX_MISSED_PERIODS = 1000


def make_subscriptions(
    owner: Any, count: int, *, anchor: datetime, interval_unit: str = "month", **fields: Any
) -> list[Subscription]:
    """``count`` subscriptions in one INSERT (the factory only builds them)."""
    built = SubscriptionFactory.build_batch(
        count, owner=owner, billing_anchor=anchor, interval_unit=interval_unit, **fields
    )
    return Subscription.objects.bulk_create(built)


def open_jobs(payment: Payment) -> list[Job]:
    return list(payment.jobs.filter(status__in=Job.OPEN_STATUSES))


def fail_payment(payment: Payment, code: str = "insufficient_balance") -> None:
    """What the engine does when a job's last attempt fails: record it, then fail the job."""
    services.payment_record_failure(payment=payment, code=code, message="balance too low")
    for job in open_jobs(payment):
        job_fail(job=job, worker_id=None, code=code, message="balance too low")


def run_in_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads released together; re-raise the first error."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = target(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def assert_one_payment_per_period_and_one_job_per_payment() -> None:
    duplicated_periods = [
        key
        for key, seen in Counter(
            Payment.objects.values_list("subscription_id", "period_start")
        ).items()
        if seen > 1
    ]
    assert duplicated_periods == []
    jobs_per_payment = Counter(Job.objects.values_list("payment_id", flat=True))
    assert set(jobs_per_payment.values()) == {1}
    assert set(jobs_per_payment) == set(Payment.objects.values_list("pk", flat=True))


# --- what is due ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_due_subscription_gets_one_payment_and_one_job(user: Any) -> None:
    now = timezone.now()
    due = SubscriptionFactory.create(owner=user, billing_anchor=now - timedelta(minutes=1))
    due_exactly_now = SubscriptionFactory.create(owner=user, billing_anchor=now)
    not_yet_due = SubscriptionFactory.create(owner=user, billing_anchor=now + timedelta(seconds=1))

    summary = scan_due(now=now, publish=False)

    assert summary.payments_created == 2
    assert summary.jobs_created == 2
    assert summary.jobs_published == 0
    assert set(Payment.objects.values_list("subscription_id", flat=True)) == {
        due.pk,
        due_exactly_now.pk,
    }
    assert not Payment.objects.filter(subscription=not_yet_due).exists()
    assert not Job.objects.filter(subscription=not_yet_due).exists()
    not_yet_due.refresh_from_db()
    assert not_yet_due.next_period_index == 0

    # Once its period starts, the next scan picks it up.
    later = scan_due(now=now + timedelta(seconds=1), publish=False)
    assert later.payments_created == 1
    assert Payment.objects.filter(subscription=not_yet_due).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields",
    [
        {"status": Subscription.Status.PAUSED},
        {"status": Subscription.Status.CANCELED, "auto_pay_enabled": False},
        {"status": Subscription.Status.CANCELED},
        {"status": Subscription.Status.UNPAID},
        {"status": Subscription.Status.ACTIVE, "auto_pay_enabled": False},
        {"status": Subscription.Status.PAST_DUE, "retry_in": timedelta(minutes=1)},
        {"status": Subscription.Status.PAST_DUE, "retry_in": None},
    ],
    ids=[
        "paused",
        "canceled",
        "canceled-auto-pay-on",
        "unpaid",
        "auto-pay-off",
        "past-due-retry-later",
        "past-due-no-retry",
    ],
)
def test_subscriptions_that_must_not_pay_are_skipped(user: Any, fields: dict[str, Any]) -> None:
    now = timezone.now()
    retry_in = fields.pop("retry_in", None)
    skipped = SubscriptionFactory.create(
        owner=user,
        billing_anchor=now - 3 * DAY,
        interval_unit=Subscription.IntervalUnit.DAY,
        dunning_next_retry_at=now + retry_in if retry_in else None,
        **fields,
    )

    summary = scan_due(now=now, publish=False)

    assert summary.subscriptions == 0
    assert summary.payments_created == summary.jobs_created == summary.dunning_retries == 0
    assert not Payment.objects.exists()
    assert not Job.objects.exists()
    skipped.refresh_from_db()
    assert skipped.next_period_index == 0


# --- missed periods ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_missed_periods_are_each_owed_once_oldest_first(user: Any) -> None:
    now = timezone.now()
    anchor = now - 5 * DAY
    subscription = SubscriptionFactory.create(
        owner=user, billing_anchor=anchor, interval_unit=Subscription.IntervalUnit.DAY
    )

    summary = scan_due(now=now, publish=False)

    # Periods start at anchor + 0..5 days; all six have started by ``now``.
    assert summary.payments_created == 6
    assert summary.jobs_created == 6
    payments = list(Payment.objects.filter(subscription=subscription).order_by("pk"))
    assert [p.period_index for p in payments] == [0, 1, 2, 3, 4, 5]  # created oldest first
    assert [p.period_start for p in payments] == [anchor + i * DAY for i in range(6)]
    assert [p.period_end for p in payments] == [anchor + (i + 1) * DAY for i in range(6)]
    subscription.refresh_from_db()
    assert subscription.next_period_index == 6
    assert subscription.next_period_due_at == anchor + 6 * DAY
    # Nothing is paid yet: the subscriber still owes from the first period on.
    assert subscription.next_payment_due_at == anchor

    again = scan_due(now=now, publish=False)
    assert again.payments_created == again.jobs_created == 0
    assert Payment.objects.count() == 6
    assert Job.objects.count() == 6


@pytest.mark.django_db
def test_cap_limits_periods_per_scan_and_next_scan_continues(user: Any, settings: Any) -> None:
    settings.AUTOPAY_SCAN_MAX_PERIODS_PER_SUBSCRIPTION = 4
    now = timezone.now()
    anchor = now - 5 * DAY
    subscription = SubscriptionFactory.create(
        owner=user, billing_anchor=anchor, interval_unit=Subscription.IntervalUnit.DAY
    )

    first = scan_due(now=now, publish=False)
    assert first.payments_created == 4
    subscription.refresh_from_db()
    assert subscription.next_period_index == 4
    assert subscription.next_period_due_at == anchor + 4 * DAY

    second = scan_due(now=now, publish=False)
    assert second.payments_created == 2
    third = scan_due(now=now, publish=False)
    assert third.payments_created == 0

    payments = list(Payment.objects.filter(subscription=subscription).order_by("pk"))
    assert [p.period_index for p in payments] == [0, 1, 2, 3, 4, 5]
    assert Job.objects.count() == 6
    subscription.refresh_from_db()
    assert subscription.next_period_index == 6


@pytest.mark.django_db
def test_capped_subscriptions_are_visited_once_per_scan_across_batches(user: Any) -> None:
    now = timezone.now()
    anchors = [now - (5 + offset) * DAY for offset in range(7)]
    for anchor in anchors:
        SubscriptionFactory.create(
            owner=user, billing_anchor=anchor, interval_unit=Subscription.IntervalUnit.DAY
        )

    first = scan_due(now=now, publish=False, batch_size=2, max_periods=2)

    # A capped subscription's new cursor sorts later in the scan's order; it must not be
    # charged a second time in the same scan.
    assert first.payments_created == 14
    assert (
        Counter(Payment.objects.values_list("subscription_id", flat=True)).most_common(1)[0][1] == 2
    )

    total = 14
    while True:
        more = scan_due(now=now, publish=False, batch_size=2, max_periods=2)
        if not more.payments_created:
            break
        total += more.payments_created
    # Subscription k (anchored 5 + k days ago) owes 6 + k periods.
    assert total == sum(6 + offset for offset in range(7))
    assert_one_payment_per_period_and_one_job_per_payment()


@pytest.mark.django_db
def test_monthly_periods_follow_the_calendar(user: Any) -> None:
    anchor = datetime.fromisoformat("2025-01-31T09:00:00+00:00")
    now = datetime.fromisoformat("2025-04-30T09:00:00+00:00")
    subscription = SubscriptionFactory.create(owner=user, billing_anchor=anchor)

    scan_due(now=now, publish=False)

    starts = list(
        Payment.objects.filter(subscription=subscription)
        .order_by("period_index")
        .values_list("period_start", flat=True)
    )
    assert [start.date().isoformat() for start in starts] == [
        "2025-01-31",
        "2025-02-28",
        "2025-03-31",
        "2025-04-30",
    ]
    subscription.refresh_from_db()
    assert subscription.next_period_due_at.date().isoformat() == "2025-05-31"


@pytest.mark.django_db
def test_batches_cover_every_due_subscription(user: Any) -> None:
    now = timezone.now()
    created = make_subscriptions(user, 25, anchor=now - timedelta(hours=1))
    make_subscriptions(user, 5, anchor=now + timedelta(hours=1))

    summary = scan_due(now=now, publish=False, batch_size=7)

    assert summary.subscriptions == 25
    assert summary.batches >= 4
    assert summary.payments_created == summary.jobs_created == 25
    assert set(Payment.objects.values_list("subscription_id", flat=True)) == {
        subscription.pk for subscription in created
    }


# --- the job and its data ---------------------------------------------------------------------


@pytest.mark.django_db
def test_job_snapshot_and_cursors(user: Any) -> None:
    now = timezone.now()
    anchor = now - timedelta(hours=2)
    subscription = SubscriptionFactory.create(
        owner=user,
        billing_anchor=anchor,
        amount=Decimal("12.500000"),
        service_name="Streaming Plus",
    )

    scan_due(now=now, publish=False)

    payment = Payment.objects.get(subscription=subscription)
    assert payment.status == Payment.Status.PENDING
    assert payment.period_index == 0
    assert payment.amount == Decimal("12.5")
    assert payment.payer_address == subscription.payer_address
    assert payment.recipient_address == subscription.recipient_address
    assert payment.token_address == subscription.token_address
    assert payment.network == subscription.network
    job = Job.objects.get(payment=payment)
    assert job.subscription_id == subscription.pk
    assert job.status == Job.Status.WAITING
    assert job.source == Job.Source.SCHEDULER
    assert job.attempts_made == 0
    assert job.max_attempts == django_settings.AUTOPAY_JOB_MAX_ATTEMPTS
    assert job.enqueued_at is not None
    assert job.data == {
        "subscriptionId": str(subscription.pk),
        "paymentId": str(payment.pk),
        "userAddress": subscription.payer_address,
        "amount": "12.5",
        "recipientAddress": subscription.recipient_address,
        "serviceName": "Streaming Plus",
        "periodStart": anchor.isoformat(),
    }

    subscription.refresh_from_db()
    assert subscription.next_period_index == 1
    assert subscription.next_period_due_at == subscription.period_start(1)
    assert subscription.next_payment_due_at == anchor  # still the earliest unpaid period


@pytest.mark.django_db
@pytest.mark.parametrize("amount", ["10.00", "0.000001", "1234567.890000", "25"])
def test_scan_job_data_matches_the_engine_snapshot(user: Any, amount: str) -> None:
    now = timezone.now()
    whole_second = now.replace(microsecond=0) - timedelta(hours=1)
    with_microseconds = now - timedelta(hours=1, microseconds=1)
    for anchor in (whole_second, with_microseconds):
        SubscriptionFactory.create(owner=user, billing_anchor=anchor, amount=Decimal(amount))

    scan_due(now=now, publish=False)

    jobs = list(Job.objects.select_related("payment__subscription"))
    assert len(jobs) == 2
    for job in jobs:
        assert job.data == job_snapshot(job.payment)


def _messages(redis_client: Any, name: str) -> list[tuple[str, list[Any]]]:
    """(task name, args) of each message on a broker list."""
    messages = []
    for raw in redis_client.lrange(name, 0, -1):
        message = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert kwargs == {}
        messages.append((message["headers"]["task"], args))
    return messages


@pytest.mark.django_db(transaction=True)
def test_scan_publishes_batches_of_job_ids(user: Any, clean_redis: Any, settings: Any) -> None:
    settings.AUTOPAY_SETTLEMENT_BATCH_SIZE = 4
    now = timezone.now()
    make_subscriptions(user, 3, anchor=now - timedelta(minutes=5))
    make_subscriptions(user, 1, anchor=now - 2 * DAY, interval_unit=Subscription.IntervalUnit.DAY)

    summary = scan_due(now=now, batch_size=5)

    job_ids = {str(pk) for pk in Job.objects.values_list("pk", flat=True)}
    assert len(job_ids) == 6
    assert summary.jobs_created == summary.jobs_published == 6
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    # Scheduled batches wait on their own (lower-priority) list, after single messages.
    assert clean_redis.llen(queue) == 0
    messages = _messages(clean_redis, f"{queue}\x06\x163")
    assert {task for task, _ in messages} == {"autopay.settle_batch"}
    batches = [args[0] for _, args in messages]
    assert all(len(ids) <= 4 for ids in batches)
    assert sorted(job_id for ids in batches for job_id in ids) == sorted(job_ids)
    from jobs.queue import broker_queued_jobs

    assert broker_queued_jobs() == 4 * len(batches), "a batch message counts its size"


@pytest.mark.django_db(transaction=True)
def test_batch_size_one_publishes_one_message_per_job(
    user: Any, clean_redis: Any, settings: Any
) -> None:
    settings.AUTOPAY_SETTLEMENT_BATCH_SIZE = 1
    now = timezone.now()
    make_subscriptions(user, 3, anchor=now - timedelta(minutes=5))
    make_subscriptions(user, 1, anchor=now - 2 * DAY, interval_unit=Subscription.IntervalUnit.DAY)

    summary = scan_due(now=now, batch_size=2)

    job_ids = {str(pk) for pk in Job.objects.values_list("pk", flat=True)}
    assert len(job_ids) == 6
    assert summary.jobs_created == summary.jobs_published == 6
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    messages = _messages(clean_redis, queue)
    assert len(messages) == 6
    assert {task for task, _ in messages} == {"autopay.process_autopay_job"}
    assert {args[0] for _, args in messages} == job_ids

    # A second scan has nothing new to publish.
    clean_redis.delete(queue)
    assert scan_due(now=now).jobs_published == 0
    assert clean_redis.llen(queue) == 0


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("scanners", [2, 4])
def test_concurrent_scans_in_threads_create_each_period_once(user: Any, scanners: int) -> None:
    now = timezone.now()
    make_subscriptions(user, 150, anchor=now - timedelta(minutes=1))
    # Some with missed periods, so that scans overlap on multi-period subscriptions too.
    make_subscriptions(user, 50, anchor=now - 2 * DAY, interval_unit="day")

    summaries: list[ScanSummary] = run_in_threads(
        scanners, lambda _index: scan_due(now=now, publish=False, batch_size=40)
    )

    expected = 150 + 50 * 3
    assert Payment.objects.count() == expected
    assert Job.objects.count() == expected
    assert sum(summary.payments_created for summary in summaries) == expected
    assert sum(summary.jobs_created for summary in summaries) == expected
    assert_one_payment_per_period_and_one_job_per_payment()
    assert not Subscription.objects.exclude(next_period_due_at__gt=now).exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_scans_in_processes_create_each_period_once(user: Any) -> None:
    now = timezone.now()
    make_subscriptions(user, 200, anchor=now - timedelta(minutes=1))
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": (
            f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        ),
    }
    # Both processes wait for the same moment after Django has started, so the scans overlap.
    start_at = time.time() + 8
    code = (
        "import json, time; "
        f"time.sleep(max(0.0, {start_at} - time.time())); "
        "from autopay.scan import scan_due; "
        "print(json.dumps(scan_due(publish=False, batch_size=25).as_dict()))"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (_stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    summaries = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]

    assert Payment.objects.count() == 200
    assert Job.objects.count() == 200
    assert sum(summary["payments_created"] for summary in summaries) == 200
    assert sum(summary["jobs_created"] for summary in summaries) == 200
    assert_one_payment_per_period_and_one_job_per_payment()


@pytest.mark.django_db(transaction=True)
def test_scan_racing_a_manual_trigger_creates_one_payment_and_one_job(
    user: Any, clean_redis: Any
) -> None:
    now = timezone.now()
    rounds = 8
    subscriptions = [
        SubscriptionFactory.create(owner=user, billing_anchor=now - timedelta(minutes=1))
        for _ in range(rounds)
    ]
    outcomes: list[str] = []
    for subscription in subscriptions:

        def act(index: int, subscription: Subscription = subscription) -> str:
            if index == 0:
                try:
                    payment_trigger(subscription=subscription)
                except services.PaymentConflict:
                    return "conflict"
                return "triggered"
            scan_due(publish=False)
            return "scanned"

        outcomes.extend(run_in_threads(2, act))

        payments = list(Payment.objects.filter(subscription=subscription))
        assert len(payments) == 1
        jobs = list(Job.objects.filter(payment=payments[0]))
        assert len(jobs) == 1
        assert jobs[0].status == Job.Status.WAITING
        subscription.refresh_from_db()
        assert subscription.next_period_index == 1
    assert set(outcomes) <= {"triggered", "conflict", "scanned"}


def _blocked_backends() -> int:
    with connection.cursor() as cursor:
        # Inside a transaction the statistics views are a snapshot unless cleared.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_scan_meeting_a_trigger_that_holds_the_subscription_neither_waits_nor_deadlocks(
    user: Any, clean_redis: Any, monkeypatch: Any
) -> None:
    """The trigger locks the subscription, then inserts the payment. A scan that inserted that
    payment first and then waited for the subscription row would deadlock with it; the scan
    must pass over a subscription someone else holds (the next scan finds it if still due)."""
    now = timezone.now()
    subscription = SubscriptionFactory.create(owner=user, billing_anchor=now - timedelta(minutes=1))
    other = SubscriptionFactory.create(owner=user, billing_anchor=now - timedelta(minutes=1))
    locked = threading.Event()
    scanned = threading.Event()
    original_insert = services._payment_insert_or_get

    def insert_after_the_scan(**kwargs: Any) -> Payment:
        locked.set()
        # Go on once the scan has finished, or once it waits on our lock (the deadlock).
        deadline = time.monotonic() + 10
        while not scanned.is_set() and not _blocked_backends():
            assert time.monotonic() < deadline, "the scan neither finished nor waited"
            time.sleep(0.02)
        return original_insert(**kwargs)

    monkeypatch.setattr(services, "_payment_insert_or_get", insert_after_the_scan)

    def act(index: int) -> Any:
        if index == 0:
            return payment_trigger(subscription=subscription)
        assert locked.wait(timeout=10)
        try:
            return scan_due(now=now, publish=False)
        finally:
            scanned.set()

    job, summary = run_in_threads(2, act)

    assert job.source == Job.Source.MANUAL
    # The scan charged the other subscription and passed over the held one.
    assert summary.payments_created == summary.jobs_created == 1
    assert Payment.objects.filter(subscription=subscription).count() == 1
    assert Payment.objects.filter(subscription=other).count() == 1
    assert Job.objects.filter(subscription=subscription).get().pk == job.pk
    subscription.refresh_from_db()
    assert subscription.next_period_index == 1
    # The next scan has nothing left to do for either.
    assert scan_due(now=now, publish=False).payments_created == 0
    assert Job.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("writer", ["postgresql", "portable"])
def test_scan_meeting_a_payment_that_already_exists_for_its_period_leaves_it_alone(
    user: Any, monkeypatch: Any, writer: str
) -> None:
    """The period's payment (and its job) exist while the subscription's cursor still points at
    that period: the scan's insert meets the unique (subscription, period_start) and must pass
    over it (ON CONFLICT DO NOTHING), not fail the batch nor add a payment or a job."""
    from autopay import scan as scan_module

    if writer == "portable":
        # The statements the scan runs on other databases, here on PostgreSQL.
        monkeypatch.setattr(
            scan_module, "_write_batch_postgresql", scan_module._write_batch_portable
        )
    now = timezone.now()
    subscription = SubscriptionFactory.create(owner=user, billing_anchor=now - timedelta(minutes=1))
    other = SubscriptionFactory.create(owner=user, billing_anchor=now - timedelta(minutes=1))
    job = payment_trigger(subscription=subscription)
    Subscription.objects.filter(pk=subscription.pk).update(
        next_period_index=0, next_period_due_at=subscription.billing_anchor
    )

    summary = scan_due(now=now, publish=False)

    # The other subscription in the same batch is charged as usual.
    assert summary.payments_created == summary.jobs_created == 1
    assert Payment.objects.filter(subscription=other).count() == 1
    assert Payment.objects.filter(subscription=subscription).get().pk == job.payment_id
    assert list(Job.objects.filter(subscription=subscription)) == [job]
    subscription.refresh_from_db()
    assert subscription.next_period_index == 1
    assert_one_payment_per_period_and_one_job_per_payment()


# --- dunning ----------------------------------------------------------------------------------


def _failed_subscription(user: Any) -> tuple[Subscription, Payment, datetime, datetime]:
    """An active subscription whose first payment's job has failed for good."""
    now = timezone.now()
    subscription = SubscriptionFactory.create(owner=user, billing_anchor=now - timedelta(minutes=1))
    scan_due(now=now, publish=False)
    payment = Payment.objects.get(subscription=subscription)
    before = timezone.now()
    fail_payment(payment)
    after = timezone.now()
    subscription.refresh_from_db()
    return subscription, payment, before, after


@pytest.mark.django_db
def test_failed_payment_is_retried_on_the_same_payment_after_an_hour(user: Any) -> None:
    subscription, payment, failed_from, failed_until = _failed_subscription(user)
    assert subscription.status == Subscription.Status.PAST_DUE
    assert subscription.dunning_attempts == 0
    retry_at = subscription.dunning_next_retry_at
    assert retry_at is not None
    assert failed_from + timedelta(hours=1) <= retry_at <= failed_until + timedelta(hours=1)

    early = scan_due(now=failed_from + timedelta(minutes=59), publish=False)
    assert early.dunning_retries == 0
    assert early.jobs_created == 0
    assert Job.objects.count() == 1

    late = scan_due(now=failed_until + timedelta(minutes=61), publish=False)
    assert late.dunning_retries == 1
    assert late.payments_created == 0
    jobs = list(Job.objects.filter(payment=payment).order_by("created_at"))
    assert [job.source for job in jobs] == [Job.Source.SCHEDULER, Job.Source.DUNNING]
    assert [job.status for job in jobs] == [Job.Status.FAILED, Job.Status.WAITING]
    assert jobs[1].data["paymentId"] == str(payment.pk)
    assert jobs[1].data["subscriptionId"] == str(subscription.pk)
    assert Payment.objects.count() == 1
    payment.refresh_from_db()
    assert payment.status == Payment.Status.PENDING
    assert payment.error_code == ""
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.PAST_DUE
    assert subscription.dunning_attempts == 1
    assert subscription.dunning_next_retry_at is None

    # Claimed once: a later scan does not retry again until the retry job fails.
    assert scan_due(now=failed_until + timedelta(minutes=90), publish=False).jobs_created == 0


@pytest.mark.django_db
def test_dunning_walks_the_schedule_to_unpaid_and_resume_then_success_restores_active(
    user: Any,
) -> None:
    schedule = django_settings.AUTOPAY_DUNNING_SCHEDULE_HOURS
    assert schedule == [1, 6, 24, 72]
    now = timezone.now()
    subscription = SubscriptionFactory.create(owner=user, billing_anchor=now - timedelta(minutes=1))
    scan_due(now=now, publish=False)
    payment = Payment.objects.get(subscription=subscription)

    for attempt, hours in enumerate(schedule):
        failed_from = timezone.now()
        fail_payment(payment)
        failed_until = timezone.now()
        subscription.refresh_from_db()
        assert subscription.status == Subscription.Status.PAST_DUE
        assert subscription.dunning_attempts == attempt
        delay = timedelta(hours=hours)
        retry_at = subscription.dunning_next_retry_at
        assert retry_at is not None
        assert failed_from + delay <= retry_at <= failed_until + delay

        early = scan_due(now=failed_from + delay - timedelta(minutes=1), publish=False)
        assert early.jobs_created == 0
        late = scan_due(now=failed_until + delay + timedelta(minutes=1), publish=False)
        assert late.dunning_retries == 1
        subscription.refresh_from_db()
        assert subscription.dunning_attempts == attempt + 1
        payment.refresh_from_db()
        assert payment.status == Payment.Status.PENDING

    fail_payment(payment)
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.UNPAID
    assert subscription.dunning_next_retry_at is None
    jobs = list(Job.objects.filter(payment=payment).order_by("created_at"))
    assert [job.source for job in jobs] == [Job.Source.SCHEDULER] + [Job.Source.DUNNING] * 4
    assert {job.status for job in jobs} == {Job.Status.FAILED}

    # Auto-pay has stopped: neither the due scan nor dunning touches it, even much later.
    idle = scan_due(now=timezone.now() + 10 * DAY, publish=False)
    assert idle.jobs_created == idle.payments_created == 0

    # The owner resumes: the failed payment is owed, so it is retried at once.
    services.subscription_resume(subscription=subscription)
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.PAST_DUE
    assert subscription.dunning_attempts == 0
    retry = scan_due(now=timezone.now() + timedelta(seconds=1), publish=False)
    assert retry.dunning_retries == 1
    assert Job.objects.filter(payment=payment, status=Job.Status.WAITING).count() == 1

    services.payment_record_success(
        payment=payment, transaction_hash="0x" + "ab" * 32, block_number=7
    )
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    assert subscription.dunning_attempts == 0
    assert subscription.dunning_next_retry_at is None
    assert subscription.next_payment_due_at == subscription.period_start(1)


@pytest.mark.django_db
def test_success_after_a_dunning_retry_returns_the_subscription_to_active(user: Any) -> None:
    subscription, payment, _, failed_until = _failed_subscription(user)
    retry_scan_at = failed_until + timedelta(minutes=61)
    scan_due(now=retry_scan_at, publish=False)
    subscription.refresh_from_db()
    assert subscription.dunning_attempts == 1

    services.payment_record_success(
        payment=payment, transaction_hash="0x" + "cd" * 32, block_number=9
    )

    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    assert subscription.dunning_attempts == 0
    assert subscription.dunning_next_retry_at is None
    # Back on the normal schedule: nothing more is owed until the next period starts.
    assert scan_due(now=retry_scan_at, publish=False).jobs_created == 0
    following = scan_due(now=subscription.next_period_due_at, publish=False)
    assert following.payments_created == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_dunning_scans_create_one_retry_job(user: Any) -> None:
    failed = [_failed_subscription(user) for _ in range(10)]
    scan_at = max(failed_until for *_, failed_until in failed) + timedelta(minutes=61)

    summaries: list[ScanSummary] = run_in_threads(
        4, lambda _index: scan_due(now=scan_at, publish=False, batch_size=3)
    )

    assert sum(summary.dunning_retries for summary in summaries) == 10
    for subscription, payment, *_ in failed:
        assert payment.jobs.filter(source=Job.Source.DUNNING).count() == 1
        assert len(open_jobs(payment)) == 1
        subscription.refresh_from_db()
        assert subscription.dunning_attempts == 1


# --- SQLite (the laptop default) ------------------------------------------------------------

_SQLITE_SCENARIO = """
import json
from datetime import timedelta
from decimal import Decimal
from django.contrib.auth import get_user_model
from django.utils import timezone
from autopay.scan import scan_due
from jobs.models import Job
from subscriptions import services
from subscriptions.models import Payment, Subscription

owner = get_user_model().objects.create(username="sqlite")
now = timezone.now()

def subscription(anchor, unit="month"):
    return Subscription.objects.create(
        owner=owner, service_name="Svc", payer_address="0x" + "1" * 40,
        recipient_address="0x" + "2" * 40, amount=Decimal("12.500"),
        token_address="0x" + "3" * 40, network="eip155:1", interval_unit=unit,
        billing_anchor=anchor, next_payment_due_at=anchor, next_period_due_at=anchor)

daily = subscription(now - timedelta(days=5), "day")
monthly = subscription(now - timedelta(minutes=1))
later = subscription(now + timedelta(hours=1))
scans = [scan_due(now=now, publish=False, batch_size=1, max_periods=4).as_dict()
         for _ in range(3)]
payment = Payment.objects.get(subscription=monthly)
services.payment_record_failure(payment=payment, code="insufficient_balance", message="low")
Job.objects.filter(payment=payment).update(status="failed")
dunning = scan_due(now=now + timedelta(hours=2), publish=False).as_dict()
retry = Job.objects.get(payment=payment, source="dunning")
print(json.dumps({
    "scans": scans,
    "dunning": dunning,
    "daily": list(Payment.objects.filter(subscription=daily).order_by("pk")
                  .values_list("period_index", flat=True)),
    "later": Payment.objects.filter(subscription=later).count(),
    "jobs": Job.objects.count(),
    "payments": Payment.objects.count(),
    "retry_data": retry.data,
    "scheduled_data": Job.objects.get(payment=payment, source="scheduler").data,
    "payment": {"id": payment.pk, "subscription": monthly.pk,
                "start": payment.period_start.isoformat()},
}))
"""


def test_scan_works_on_sqlite(tmp_path: Path) -> None:
    """The portable path, on a fresh SQLite database in a subprocess (migrate + scenario)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'autopay.sqlite3'}",
        "AUTOPAY_MAX_MISSED_PERIODS": "1000",
    }
    for command in (["migrate", "-v0"], ["shell", "-c", _SQLITE_SCENARIO]):
        completed = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])

    first, second, third = result["scans"]
    # Daily: 6 periods owed, at most 4 per scan, oldest first; monthly: 1; one not yet due.
    assert (first["payments_created"], second["payments_created"]) == (5, 2)
    assert third["payments_created"] == third["jobs_created"] == 0
    assert result["daily"] == [0, 1, 2, 3, 4, 5]
    assert result["later"] == 1  # due by the time of the dunning scan, two hours on
    assert result["payments"] == 8
    # The failed monthly payment is retried on the same payment, with the baseline's data.
    assert result["dunning"]["dunning_retries"] == 1
    assert result["dunning"]["payments_created"] == 1
    assert result["jobs"] == 9
    payment = result["payment"]
    assert (
        result["retry_data"]
        == result["scheduled_data"]
        == {
            "subscriptionId": str(payment["subscription"]),
            "paymentId": str(payment["id"]),
            "userAddress": "0x" + "1" * 40,
            "amount": "12.5",
            "recipientAddress": "0x" + "2" * 40,
            "serviceName": "Svc",
            "periodStart": payment["start"],
        }
    )


@pytest.mark.django_db
def test_resume_charges_the_period_in_progress_and_skips_those_spent_paused(user: Any) -> None:
    """The README's rule: periods that began and ended while paused are never charged; the
    period in progress at resume is (its service is delivered), once."""
    anchor = timezone.now() - timedelta(days=10, hours=1)
    subscription = SubscriptionFactory.create(
        owner=user, billing_anchor=anchor, interval_unit="day"
    )
    services.subscription_pause(subscription=subscription)
    paused = scan_due(now=timezone.now(), publish=False)
    assert paused.payments_created == 0

    services.subscription_resume(subscription=subscription)
    summary = scan_due(now=timezone.now(), publish=False)

    assert summary.payments_created == 1
    payment = Payment.objects.get(subscription=subscription)
    assert payment.period_index == 10
    assert payment.period_start == anchor + timedelta(days=10)
    assert payment.period_start < timezone.now() < payment.period_start + DAY
    assert Job.objects.filter(payment=payment).count() == 1
    assert scan_due(now=timezone.now(), publish=False).payments_created == 0
