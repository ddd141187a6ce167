"""Subscription services against real PostgreSQL: the one-payment-per-period guarantees."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from jobs.models import Job
from jobs.services import JobAlreadyOpen, job_create, payment_trigger
from subscriptions import services
from subscriptions.models import Payment, Subscription
from tests.factories import SubscriptionFactory


def run_at_once(workers: int, action: Callable[[], Any]) -> list[tuple[str, Any]]:
    """Run ``action`` in ``workers`` threads released together; each has its own connection."""
    barrier = threading.Barrier(workers, timeout=10)
    outcomes: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            barrier.wait()
            result: tuple[str, Any] = ("ok", action())
        except Exception as exc:
            result = ("error", exc)
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    return outcomes


# --- concurrency (each thread commits for real, so these need transactional_db) -----------------


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_triggers_create_exactly_one_payment_and_one_job(
    transactional_db: Any, clean_redis: Any
) -> None:
    subscription = SubscriptionFactory.create()

    def trigger() -> Job:
        return payment_trigger(subscription=Subscription.objects.get(pk=subscription.pk))

    outcomes = run_at_once(2, trigger)

    succeeded = [value for kind, value in outcomes if kind == "ok"]
    refused = [value for kind, value in outcomes if kind == "error"]
    assert len(succeeded) == 1, outcomes
    assert len(refused) == 1, outcomes
    assert isinstance(refused[0], services.PaymentConflict), refused
    assert Payment.objects.count() == 1
    assert Job.objects.count() == 1
    job = Job.objects.get()
    assert job.pk == succeeded[0].pk
    assert job.payment.period_index == 0
    # Only the winner published a message (after its commit).
    assert clean_redis.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 1


@pytest.mark.django_db(transaction=True)
def test_many_concurrent_triggers_still_create_one_job(transactional_db: Any) -> None:
    subscription = SubscriptionFactory.create()

    def trigger() -> Job:
        return payment_trigger(subscription=Subscription.objects.get(pk=subscription.pk))

    outcomes = run_at_once(6, trigger)

    kinds = sorted(kind for kind, _ in outcomes)
    assert kinds == ["error"] * 5 + ["ok"], outcomes
    assert all(
        isinstance(value, services.PaymentConflict) for kind, value in outcomes if kind == "error"
    )
    assert Payment.objects.count() == 1
    assert Job.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_job_creation_on_one_payment_is_decided_by_the_constraint(
    transactional_db: Any,
) -> None:
    """Without the trigger's row lock, the partial unique index alone admits one open job."""
    subscription = SubscriptionFactory.create()
    payment = services.payment_build(subscription=subscription, index=0)
    payment.save()

    def create() -> Job:
        with transaction.atomic():
            return job_create(
                payment=Payment.objects.get(pk=payment.pk), source=Job.Source.SCHEDULER
            )

    outcomes = run_at_once(4, create)

    assert sorted(kind for kind, _ in outcomes) == ["error", "error", "error", "ok"], outcomes
    assert all(isinstance(value, JobAlreadyOpen) for kind, value in outcomes if kind == "error")
    assert Job.objects.filter(payment=payment).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_inserts_of_one_period_are_decided_by_the_constraint(
    transactional_db: Any,
) -> None:
    subscription = SubscriptionFactory.create()

    def insert() -> Payment:
        payment = services.payment_build(
            subscription=Subscription.objects.get(pk=subscription.pk), index=0
        )
        payment.save()
        return payment

    outcomes = run_at_once(4, insert)

    assert sorted(kind for kind, _ in outcomes) == ["error", "error", "error", "ok"], outcomes
    assert all(isinstance(value, IntegrityError) for kind, value in outcomes if kind == "error")
    assert Payment.objects.count() == 1


# --- constraints, directly ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_second_payment_for_the_same_period_is_refused_by_the_database() -> None:
    subscription = SubscriptionFactory.create()
    services.payment_build(subscription=subscription, index=0).save()
    duplicate = services.payment_build(subscription=subscription, index=0)

    with pytest.raises(IntegrityError, match="payment_one_per_period"), transaction.atomic():
        duplicate.save()

    # Even a raw insert that bypasses the ORM's model state is refused.
    first = Payment.objects.get()
    with pytest.raises(IntegrityError), transaction.atomic():
        Payment.objects.bulk_create([services.payment_build(subscription=subscription, index=0)])
    assert list(Payment.objects.values_list("pk", flat=True)) == [first.pk]
    # The next period and another subscription's same instant are fine.
    services.payment_build(subscription=subscription, index=1).save()
    other = SubscriptionFactory.create(billing_anchor=subscription.billing_anchor)
    services.payment_build(subscription=other, index=0).save()
    assert Payment.objects.count() == 3


@pytest.mark.django_db
def test_only_one_open_job_per_payment_but_failed_ones_may_pile_up() -> None:
    subscription = SubscriptionFactory.create()
    payment = services.payment_build(subscription=subscription, index=0)
    payment.save()
    first = job_create(payment=payment, source=Job.Source.SCHEDULER, publish=False)

    for status in Job.OPEN_STATUSES:
        Job.objects.filter(pk=first.pk).update(status=status)
        with pytest.raises(JobAlreadyOpen):
            job_create(payment=payment, source=Job.Source.MANUAL, publish=False)

    Job.objects.filter(pk=first.pk).update(status=Job.Status.FAILED)
    second = job_create(payment=payment, source=Job.Source.RETRY, publish=False)
    Job.objects.filter(pk=second.pk).update(status=Job.Status.FAILED)
    job_create(payment=payment, source=Job.Source.RETRY, publish=False)
    assert Job.objects.filter(payment=payment).count() == 3


@pytest.mark.django_db
def test_amount_must_be_positive_in_the_database() -> None:
    subscription = SubscriptionFactory.create()
    with pytest.raises(IntegrityError, match="sub_amount_positive"), transaction.atomic():
        Subscription.objects.filter(pk=subscription.pk).update(amount=0)


# --- trigger rules -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_trigger_creates_the_payment_of_the_earliest_due_period_and_advances_the_cursor(
    settings: Any,
) -> None:
    settings.AUTOPAY_MAX_MISSED_PERIODS = 100  # the waiver is tested in test_missed_periods.py
    anchor = timezone.now() - timedelta(days=40)
    subscription = SubscriptionFactory.create(billing_anchor=anchor, interval_unit="week")

    job = payment_trigger(subscription=subscription)

    payment = job.payment
    assert payment.period_index == 0
    assert payment.period_start == anchor
    assert payment.period_end == anchor + timedelta(weeks=1)
    assert job.data["subscriptionId"] == str(subscription.pk)
    assert job.data["amount"] == "10"
    subscription.refresh_from_db()
    assert subscription.next_period_index == 1
    assert subscription.next_period_due_at == anchor + timedelta(weeks=1)
    # The unpaid period is still what the subscriber owes next.
    assert subscription.next_payment_due_at == anchor


@pytest.mark.django_db
def test_trigger_refuses_with_state_errors_and_writes_nothing() -> None:
    for fields in (
        {"auto_pay_enabled": False},
        {"status": Subscription.Status.PAUSED},
        {"status": Subscription.Status.CANCELED},
    ):
        subscription = SubscriptionFactory.create(**fields)
        with pytest.raises(services.SubscriptionStateError):
            payment_trigger(subscription=subscription)
    assert Payment.objects.count() == 0
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_trigger_refuses_a_completed_period() -> None:
    subscription = SubscriptionFactory.create(billing_anchor=timezone.now() - timedelta(days=1))
    job = payment_trigger(subscription=subscription)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED, progress=100)
    services.payment_record_success(
        payment=job.payment, transaction_hash="0x" + "cd" * 32, block_number=7
    )

    with pytest.raises(services.PaymentConflict):
        payment_trigger(subscription=Subscription.objects.get(pk=subscription.pk))

    assert Payment.objects.count() == 1
    assert Job.objects.count() == 1
    subscription.refresh_from_db()
    assert subscription.next_payment_due_at == subscription.period_start(1)


@pytest.mark.django_db
def test_resume_does_not_charge_the_periods_spent_paused() -> None:
    anchor = timezone.now() - timedelta(days=10, hours=1)
    subscription = SubscriptionFactory.create(billing_anchor=anchor, interval_unit="day")
    services.subscription_pause(subscription=subscription)

    resumed = services.subscription_resume(subscription=subscription)

    assert resumed.status == Subscription.Status.ACTIVE
    assert resumed.next_period_index == 10
    assert resumed.next_period_due_at == anchor + timedelta(days=10)
    assert resumed.next_payment_due_at == anchor + timedelta(days=10)


@pytest.mark.django_db
def test_update_of_a_canceled_subscription_is_refused() -> None:
    subscription = services.subscription_cancel(subscription=SubscriptionFactory.create())
    with pytest.raises(services.SubscriptionStateError):
        services.subscription_update(subscription=subscription, service_name="x")
    with pytest.raises(ValueError, match="cannot be updated"):
        services.subscription_update(
            subscription=SubscriptionFactory.create(), status=Subscription.Status.ACTIVE
        )


# --- decisions taken on a stale instance (the view loaded it before another request changed it)


@pytest.mark.django_db
def test_trigger_rechecks_the_state_under_its_lock() -> None:
    subscription = SubscriptionFactory.create()
    stale = Subscription.objects.get(pk=subscription.pk)
    services.subscription_cancel(subscription=Subscription.objects.get(pk=subscription.pk))

    with pytest.raises(services.SubscriptionStateError):
        payment_trigger(subscription=stale)

    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_pause_does_not_undo_a_concurrent_cancel() -> None:
    subscription = SubscriptionFactory.create()
    stale = Subscription.objects.get(pk=subscription.pk)
    services.subscription_cancel(subscription=Subscription.objects.get(pk=subscription.pk))

    with contextlib.suppress(services.SubscriptionStateError):
        services.subscription_pause(subscription=stale)

    assert Subscription.objects.get(pk=subscription.pk).status == Subscription.Status.CANCELED


# --- recording many settlements at once (the batch path) ----------------------------------------


def _twin_scenarios(anchor: Any) -> list[tuple[Subscription, Payment]]:
    """Subscriptions in the states a settlement meets, each with the payment it settles:
    active and up to date; past due with another failed period still owed; past due with
    nothing else owed; a cursor left behind the paid period."""
    scenarios = []
    for kind in ("active", "past_due_owing", "past_due_clear", "behind"):
        subscription = SubscriptionFactory.create(
            billing_anchor=anchor,
            interval_unit=Subscription.IntervalUnit.DAY,
            next_payment_due_at=anchor,
            next_period_due_at=anchor,
        )
        if kind == "past_due_owing":
            failed = services.payment_build(subscription=subscription, index=0)
            failed.status = Payment.Status.FAILED
            failed.save()
        paid_index = 1 if kind == "past_due_owing" else 0
        payment = services.payment_build(subscription=subscription, index=paid_index)
        payment.status = Payment.Status.SUBMITTED
        payment.save()
        cursor = paid_index if kind == "behind" else paid_index + 1
        Subscription.objects.filter(pk=subscription.pk).update(
            next_period_index=cursor,
            next_period_due_at=subscription.period_start(cursor),
            status=Subscription.Status.PAST_DUE
            if kind.startswith("past_due")
            else Subscription.Status.ACTIVE,
            dunning_attempts=2 if kind.startswith("past_due") else 0,
            dunning_next_retry_at=anchor + timedelta(days=5)
            if kind.startswith("past_due")
            else None,
        )
        scenarios.append((subscription, payment))
    return scenarios


@pytest.mark.django_db
def test_recording_many_settlements_at_once_does_what_recording_each_does() -> None:
    anchor = timezone.now() - timedelta(days=3)
    one_by_one = _twin_scenarios(anchor)
    at_once = _twin_scenarios(anchor)

    for _, payment in one_by_one:
        services.payment_record_success(payment=payment, transaction_hash="0xaa", block_number=7)
    completed = services.payments_record_success(
        payments=[Payment.objects.get(pk=payment.pk) for _, payment in at_once],
        transaction_hash="0xbb",
        block_number=8,
    )

    assert completed == 4
    fields = (
        "status",
        "next_period_index",
        "next_period_due_at",
        "next_payment_due_at",
        "dunning_attempts",
        "dunning_next_retry_at",
    )
    for (single, _), (bulk, _) in zip(one_by_one, at_once, strict=True):
        single.refresh_from_db()
        bulk.refresh_from_db()
        assert [getattr(bulk, name) for name in fields] == [
            getattr(single, name) for name in fields
        ]
    statuses = [subscription.status for subscription, _ in at_once]
    assert statuses == ["active", "past_due", "active", "active"]
    for _, payment in at_once:
        payment.refresh_from_db()
        assert (payment.status, payment.transaction_hash, payment.block_number) == (
            Payment.Status.COMPLETED,
            "0xbb",
            8,
        )
    # Recording again changes nothing: a completed payment keeps its transaction.
    assert (
        services.payments_record_success(
            payments=[payment for _, payment in at_once], transaction_hash="0xcc", block_number=9
        )
        == 0
    )
    assert set(Payment.objects.filter(transaction_hash="0xcc")) == set()
