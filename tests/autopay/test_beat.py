"""The beat rows: created by migrate, idempotent to sync, editable by operators."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from autopay.beat import periodic_specs, sync_periodic_tasks

SCAN = "autopay: scan due subscriptions"


def scan_row() -> PeriodicTask:
    return PeriodicTask.objects.select_related("interval").get(name=SCAN)


@pytest.mark.django_db
def test_scan_row_exists_after_migrate_with_the_configured_interval() -> None:
    # The test database was built by migrate; nothing here creates the rows.
    task = scan_row()
    assert task.task == "autopay.scan_due_subscriptions"
    assert task.enabled
    assert task.crontab is None
    assert task.interval.period == IntervalSchedule.SECONDS
    assert task.interval.every == django_settings.AUTOPAY_SCAN_INTERVAL_MINUTES * 60
    assert django_settings.AUTOPAY_SCAN_INTERVAL_MINUTES == 5  # the documented default
    assert not task.queue  # sent to the default queue of the moment


@pytest.mark.django_db
def test_every_beat_row_names_a_registered_task() -> None:
    from config.celery import app

    app.loader.import_default_modules()
    rows = {row.name: row.task for row in PeriodicTask.objects.all()}
    for spec in periodic_specs():
        assert rows[spec.name] == spec.task
        assert spec.task in app.tasks, spec.task


@pytest.mark.django_db
def test_beat_database_scheduler_loads_the_scan_every_five_minutes() -> None:
    from django_celery_beat.schedulers import DatabaseScheduler

    from config.celery import app

    scheduler = DatabaseScheduler(app=app, lazy=True)
    entries = scheduler.all_as_schedule()
    entry = entries[SCAN]
    assert entry.task == "autopay.scan_due_subscriptions"
    assert entry.schedule.run_every == timedelta(minutes=5)


@pytest.mark.django_db(transaction=True)
def test_rows_come_back_after_a_flush() -> None:
    """A flush (as between transactional tests) re-emits post_migrate: the rows are recreated."""
    assert scan_row().interval.every == 300


@pytest.mark.django_db
def test_sync_is_idempotent() -> None:
    tasks_before = set(PeriodicTask.objects.values_list("pk", "name", "task", "interval_id"))
    intervals_before = IntervalSchedule.objects.count()

    assert sync_periodic_tasks() == []
    assert sync_periodic_tasks() == []
    assert sync_periodic_tasks(force=True) == []

    assert set(PeriodicTask.objects.values_list("pk", "name", "task", "interval_id")) == (
        tasks_before
    )
    assert IntervalSchedule.objects.count() == intervals_before


@pytest.mark.django_db
def test_sync_recreates_a_deleted_row() -> None:
    PeriodicTask.objects.filter(name=SCAN).delete()

    assert sync_periodic_tasks() == [SCAN]

    assert scan_row().interval.every == 300
    assert sync_periodic_tasks() == []


@pytest.mark.django_db
def test_operator_edits_survive_sync_unless_forced() -> None:
    task = scan_row()
    ten_minutes, _ = IntervalSchedule.objects.get_or_create(
        every=10, period=IntervalSchedule.MINUTES
    )
    task.interval = ten_minutes
    task.enabled = False
    task.save()

    assert sync_periodic_tasks() == []
    task = scan_row()
    assert task.interval_id == ten_minutes.pk
    assert not task.enabled

    changed_before = PeriodicTasks.last_change()
    assert sync_periodic_tasks(force=True) == [SCAN]
    task = scan_row()
    assert task.enabled
    assert (task.interval.every, task.interval.period) == (300, IntervalSchedule.SECONDS)
    # Beat notices the change without a restart.
    assert PeriodicTasks.last_change() != changed_before


@pytest.mark.django_db
def test_force_replaces_an_operator_crontab_and_expiry() -> None:
    task = scan_row()
    crontab = CrontabSchedule.objects.create(minute="0", hour="3")
    task.interval = None
    task.crontab = crontab
    task.expires = timezone.now() - timedelta(days=1)
    task.queue = "somewhere-else"
    task.save()

    assert sync_periodic_tasks() == []
    assert scan_row().crontab_id == crontab.pk

    assert sync_periodic_tasks(force=True) == [SCAN]
    task = scan_row()
    assert task.crontab is None
    assert task.interval.every == 300
    assert task.expires is None
    assert not task.queue


@pytest.mark.django_db
def test_force_follows_a_changed_interval_setting(settings: Any) -> None:
    settings.AUTOPAY_SCAN_INTERVAL_MINUTES = 15

    assert sync_periodic_tasks() == []  # the existing row is left alone
    assert scan_row().interval.every == 300

    assert SCAN in sync_periodic_tasks(force=True)
    assert scan_row().interval.every == 900


@pytest.mark.django_db
def test_duplicate_interval_rows_do_not_break_sync() -> None:
    # IntervalSchedule has no unique constraint; an operator can create a twin in the admin.
    IntervalSchedule.objects.create(every=300, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name=SCAN).delete()

    assert sync_periodic_tasks() == [SCAN]
    assert sync_periodic_tasks(force=True) == []


# --- beat, a worker and the chain, with no manual step --------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.chain
@pytest.mark.worker
def test_running_beat_and_worker_pay_a_due_subscription(
    start_worker: Any,
    worker_env: dict[str, str],
    funded_wallet: Any,
    token_address: str,
    tmp_path: Path,
) -> None:
    from autopay.chain.client import token_balance
    from subscriptions.models import Payment
    from tests.conftest import REPO_ROOT, wait_for
    from tests.factories import SubscriptionFactory, new_address

    wallet = funded_wallet(50 * 10**6)
    subscription = SubscriptionFactory.create(
        owner=wallet.owner,
        wallet=wallet,
        payer_address=wallet.address,
        recipient_address=new_address(),
        token_address=token_address,
        amount=Decimal("4.2"),
        billing_anchor=timezone.now() - timedelta(minutes=1),
    )
    # An operator shortens the interval in the admin so that the test need not wait 5 minutes.
    task = scan_row()
    task.interval, _ = IntervalSchedule.objects.get_or_create(
        every=1, period=IntervalSchedule.SECONDS
    )
    task.save()
    start_worker()
    log_path = tmp_path / "beat.log"
    with log_path.open("ab") as log:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "--scheduler",
                "django_celery_beat.schedulers:DatabaseScheduler",
                "--max-interval",
                "1",
                "-l",
                "INFO",
            ],
            cwd=REPO_ROOT,
            env=worker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def paid() -> Payment | None:
            return Payment.objects.filter(
                subscription=subscription, status=Payment.Status.COMPLETED
            ).first()

        try:
            payment = wait_for(paid, timeout=90, interval=0.5)
        except AssertionError:
            raise AssertionError(f"not paid; beat log:\n{log_path.read_text()[-3000:]}") from None
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=20)

    assert payment.period_index == 0
    assert token_balance(token_address, str(wallet.address)) == 50 * 10**6 - 4_200_000
    assert "autopay: scan due subscriptions" in log_path.read_text()
    assert Payment.objects.filter(subscription=subscription).count() == 1
