"""Operator management commands on real data (PostgreSQL, Redis), through call_command."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from jobs.models import Job
from subscriptions.models import Payment, Subscription
from subscriptions.services import payment_build
from tests.factories import SubscriptionFactory, failed_job

pytestmark = pytest.mark.django_db


def run(*args: str, stderr: Any = None) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=stderr or io.StringIO())
    return out.getvalue()


def retries_of(job: Job) -> list[Job]:
    return list(Job.objects.filter(payment_id=job.payment_id, source=Job.Source.RETRY))


def snapshot() -> tuple[list[Any], list[Any]]:
    jobs = list(Job.objects.order_by("pk").values_list("pk", "status", "updated_at"))
    payments = list(Payment.objects.order_by("pk").values_list("pk", "status", "updated_at"))
    return jobs, payments


# --- autopay_stats ----------------------------------------------------------------------------


@pytest.fixture
def queue(user: Any) -> dict[str, Any]:
    """Two waiting jobs (one 10 minutes old), one completed and two failed in the last hour."""
    subscription = SubscriptionFactory.create(owner=user)
    now = timezone.now()
    jobs: dict[str, Any] = {"failed": [failed_job(subscription, index=i) for i in (0, 1)]}
    for index in (2, 3):
        payment = payment_build(subscription=subscription, index=index)
        payment.save()
        jobs.setdefault("waiting", []).append(
            Job.objects.create(subscription=subscription, payment=payment)
        )
    Job.objects.filter(pk=jobs["waiting"][0].pk).update(created_at=now - timedelta(minutes=10))
    payment = payment_build(subscription=subscription, index=4)
    payment.status = Payment.Status.COMPLETED
    payment.save()
    jobs["completed"] = Job.objects.create(
        subscription=subscription,
        payment=payment,
        status=Job.Status.COMPLETED,
        progress=100,
        finished_at=now - timedelta(minutes=1),
    )
    return jobs


def test_stats_prints_counts_queue_and_rates(queue: Any, clean_redis: Any) -> None:
    clean_redis.rpush(settings.CELERY_TASK_DEFAULT_QUEUE, "a", "b", "c")

    output = run("autopay_stats")

    lines = output.splitlines()
    assert "  waiting           2" in lines
    assert "  active            0" in lines
    assert "  completed         1" in lines
    assert "  failed            2" in lines
    assert "  total             5" in lines
    assert f"Broker queue {settings.CELERY_TASK_DEFAULT_QUEUE!r}: 3 message(s)" in output
    assert "Oldest waiting job: 10 min" in output
    assert "Failure rate, last hour: 66.7 % (2 failed of 3 finished)" in output
    assert "Failure rate, last 24 hours: 66.7 % (2 failed of 3 finished)" in output


def test_stats_as_json(queue: Any, clean_redis: Any) -> None:
    stats = json.loads(run("autopay_stats", "--json"))

    assert stats["counts"] == {
        "waiting": 2,
        "active": 0,
        "completed": 1,
        "failed": 2,
        "delayed": 0,
    }
    assert stats["total"] == 5
    assert stats["queueLength"] == 0
    assert 590 <= stats["oldestWaitingAgeSeconds"] <= 700
    assert stats["finished"]["lastHour"] == {"completed": 1, "failed": 2, "failureRate": 0.6667}


def test_stats_on_an_empty_queue(db: Any, clean_redis: Any) -> None:
    output = run("autopay_stats")
    assert "  total             0" in output.splitlines()
    assert "Oldest waiting job: none" in output
    assert "Failure rate, last hour: 0.0 % (0 failed of 0 finished)" in output


# --- autopay_retry_failed ---------------------------------------------------------------------


def test_retry_by_id(user: Any) -> None:
    job = failed_job(SubscriptionFactory.create(owner=user))
    other = failed_job(SubscriptionFactory.create(owner=user))

    output = run("autopay_retry_failed", "--job", str(job.pk), "--no-progress")

    assert "Retried 1 failed job(s)." in output
    assert "Skipped 0." in output
    [new_job] = retries_of(job)
    assert new_job.status == Job.Status.WAITING
    assert new_job.payment_id == job.payment_id
    job.payment.refresh_from_db()
    assert job.payment.status == Payment.Status.PENDING
    assert retries_of(other) == []


def test_retry_by_id_explains_each_skip(user: Any) -> None:
    retryable = failed_job(SubscriptionFactory.create(owner=user))
    paid = failed_job(SubscriptionFactory.create(owner=user))
    Payment.objects.filter(pk=paid.payment_id).update(status=Payment.Status.COMPLETED)
    paused = failed_job(SubscriptionFactory.create(owner=user, status=Subscription.Status.PAUSED))
    open_payment = payment_build(subscription=retryable.subscription, index=5)
    open_payment.save()
    waiting = Job.objects.create(subscription=retryable.subscription, payment=open_payment)
    missing = "00000000-0000-0000-0000-000000000000"

    output = run(
        "autopay_retry_failed",
        *("--job", str(retryable.pk)),
        *("--job", str(paid.pk)),
        *("--job", str(paused.pk)),
        *("--job", str(waiting.pk)),
        *("--job", missing),
    )

    assert "Retried 1 failed job(s)." in output
    assert f"Skipping {paid.pk}: payment already completed." in output
    assert f"Skipping {paused.pk}: subscription not chargeable" in output
    assert f"Skipping {waiting.pk}: job is not failed (it is waiting)." in output
    assert f"Skipping {missing}: job not found." in output
    assert "Skipped 4:" in output
    assert len(retries_of(retryable)) == 1
    assert retries_of(paid) == retries_of(paused) == []


def test_retry_by_error_code(user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    expired = [failed_job(subscription, index=i, code="authorization_expired") for i in (0, 1)]
    broke = failed_job(subscription, index=2, code="insufficient_balance")

    output = run("autopay_retry_failed", "--error-code", "authorization_expired")

    assert "Retried 2 failed job(s)." in output
    assert all(len(retries_of(job)) == 1 for job in expired)
    assert retries_of(broke) == []
    broke.payment.refresh_from_db()
    assert broke.payment.status == Payment.Status.FAILED


def test_retry_all_retries_each_unpaid_payment_once(user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    # Payment 0 failed twice: only its latest failed job is retried.
    first = failed_job(subscription, index=0, ago=timedelta(hours=2))
    latest = failed_job(subscription, index=0, ago=timedelta(hours=1))
    other = failed_job(subscription, index=1, code="rpc_unavailable")
    paid = failed_job(subscription, index=2)
    Payment.objects.filter(pk=paid.payment_id).update(status=Payment.Status.COMPLETED)
    canceled = failed_job(
        SubscriptionFactory.create(owner=user, status=Subscription.Status.CANCELED)
    )

    output = run("autopay_retry_failed", "--all", "--no-progress")

    assert "Retried 2 failed job(s)." in output
    assert "Skipped 3:" in output
    assert "1  a newer job exists for the same payment" in output
    assert "1  payment already completed" in output
    assert "1  subscription not chargeable" in output
    assert len(retries_of(first)) == 1  # same payment as ``latest``: one retry in all
    assert Job.objects.filter(payment_id=latest.payment_id, status=Job.Status.WAITING).count() == 1
    assert len(retries_of(other)) == 1
    assert retries_of(paid) == retries_of(canceled) == []

    # Run again: every payment now has a job in flight, nothing is retried twice.
    again = run("autopay_retry_failed", "--all")
    assert "Retried 0 failed job(s)." in again
    assert Job.objects.filter(source=Job.Source.RETRY).count() == 2


def test_retry_limit(user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    oldest = failed_job(subscription, index=0, ago=timedelta(hours=3))
    newer = failed_job(subscription, index=1, ago=timedelta(hours=1))

    output = run("autopay_retry_failed", "--all", "--limit", "1")

    assert "Retried 1 failed job(s)." in output
    assert "1  over --limit" in output
    assert len(retries_of(oldest)) == 1  # oldest failure first
    assert retries_of(newer) == []


def test_dry_run_changes_nothing(user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    jobs = [failed_job(subscription, index=i, code="rpc_unavailable") for i in (0, 1, 2)]
    before = snapshot()

    output = run("autopay_retry_failed", "--all", "--dry-run")

    assert snapshot() == before
    assert "Dry run: would retry 3 failed job(s); nothing was changed." in output
    assert all(str(job.pk) in output for job in jobs)
    by_id = run("autopay_retry_failed", "--job", str(jobs[0].pk), "--dry-run")
    assert "would retry 1 failed job(s)" in by_id
    assert snapshot() == before


def test_progress_bar_on_a_terminal(user: Any) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    subscription = SubscriptionFactory.create(owner=user)
    for index in (0, 1, 2):
        failed_job(subscription, index=index)
    terminal = Terminal()

    run("autopay_retry_failed", "--all", stderr=terminal)
    assert "Retrying" in terminal.getvalue()
    assert "3/3" in terminal.getvalue()

    quiet = Terminal()
    Job.objects.filter(source=Job.Source.RETRY).update(status=Job.Status.FAILED)
    run("autopay_retry_failed", "--all", "--no-progress", stderr=quiet)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((), "Choose exactly one of"),
        (("--all", "--job", "00000000-0000-0000-0000-000000000000"), "Choose exactly one of"),
        (("--all", "--error-code", "rpc_unavailable"), "Choose exactly one of"),
        (("--job", "not-a-uuid"), "--job expects a job id"),
        (("--all", "--limit", "0"), "--limit must be a positive integer"),
        (("--all", "--limit", "ten"), "--limit must be a positive integer"),
        (("--error-code", " "), "--error-code needs a non-empty code"),
    ],
)
def test_retry_bad_arguments(db: Any, arguments: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("autopay_retry_failed", *arguments)


# --- autopay_trigger --------------------------------------------------------------------------


def test_trigger_prints_the_job_id(user: Any) -> None:
    subscription = SubscriptionFactory.create(
        owner=user, billing_anchor=timezone.now() - timedelta(hours=1)
    )

    output = run("autopay_trigger", str(subscription.pk))

    job = Job.objects.get(subscription=subscription)
    assert f"Job {job.pk} queued for subscription {subscription.pk}" in output
    assert job.source == Job.Source.MANUAL
    assert job.status == Job.Status.WAITING


def test_trigger_quiet_prints_only_the_id(user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    out = io.StringIO()
    call_command("autopay_trigger", str(subscription.pk), verbosity=0, stdout=out)
    assert out.getvalue().strip() == str(Job.objects.get(subscription=subscription).pk)


def test_trigger_explains_a_paused_subscription(user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user, status=Subscription.Status.PAUSED)

    with pytest.raises(CommandError, match=r"not triggered: Subscription is paused"):
        run("autopay_trigger", str(subscription.pk))
    assert not Job.objects.exists()


def test_trigger_explains_a_payment_in_flight(user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    run("autopay_trigger", str(subscription.pk))

    with pytest.raises(CommandError, match="already in flight"):
        run("autopay_trigger", str(subscription.pk))
    assert Job.objects.count() == 1


def test_trigger_unknown_subscription(db: Any) -> None:
    with pytest.raises(CommandError, match="Subscription 999999 not found"):
        run("autopay_trigger", "999999")


# --- autopay_scan -----------------------------------------------------------------------------


def test_scan_creates_and_publishes_jobs(user: Any, clean_redis: Any) -> None:
    due = SubscriptionFactory.create(
        owner=user, billing_anchor=timezone.now() - timedelta(minutes=1)
    )
    later = SubscriptionFactory.create(
        owner=user, billing_anchor=timezone.now() + timedelta(days=1)
    )

    output = run("autopay_scan")

    assert "1 due subscription(s), 1 payment(s) created, 1 job(s) created" in output
    assert "1 published" in output
    job = Job.objects.get(subscription=due)
    assert job.status == Job.Status.WAITING
    assert job.source == Job.Source.SCHEDULER
    assert not Job.objects.filter(subscription=later).exists()
    # One batch message (scheduled work waits on the queue's lower-priority list).
    assert clean_redis.llen(f"{settings.CELERY_TASK_DEFAULT_QUEUE}\x06\x163") == 1

    # A second scan finds nothing new: the period already has its payment and job.
    again = run("autopay_scan")
    assert "0 payment(s) created, 0 job(s) created" in again
    assert Job.objects.filter(subscription=due).count() == 1


def test_scan_without_publishing(user: Any, clean_redis: Any) -> None:
    due = SubscriptionFactory.create(
        owner=user, billing_anchor=timezone.now() - timedelta(minutes=1)
    )

    summary = json.loads(run("autopay_scan", "--no-publish", "--json"))

    assert summary["jobs_created"] == 1
    assert summary["jobs_published"] == 0
    assert Job.objects.filter(subscription=due, status=Job.Status.WAITING).count() == 1
    assert clean_redis.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 0
