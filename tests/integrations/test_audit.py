"""The audit log (django-auditlog): who changed what, before and after, through the admin,
the dashboard, the API (staff with a token), management commands and beat schedule edits;
append-only in PostgreSQL; "Recent actions" shows a dashboard retry; workers are not audited."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.contrib.admin.models import LogEntry as AdminLogEntry
from django.db import connection, transaction
from django.db.utils import DatabaseError
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

from autopay.beat import sync_periodic_tasks
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.models import Payment, Subscription
from tests.conftest import wait_for
from tests.factories import PayerWalletFactory, SubscriptionFactory, UserFactory, failed_job

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def _entries(obj: Any) -> Any:
    return LogEntry.objects.get_for_object(obj).order_by("timestamp", "pk")


def test_a_staff_api_change_names_the_staff_user_and_the_before_and_after(
    staff_api: APIClient, staff_user: Any, user: Any
) -> None:
    wallet = PayerWalletFactory.create(owner=user)
    subscription = SubscriptionFactory.create(
        owner=user, wallet=wallet, payer_address=wallet.address, amount=Decimal("10")
    )
    response = staff_api.patch(
        f"/api/subscriptions/{subscription.pk}/", {"amount": "12.5"}, format="json"
    )
    assert response.status_code == 200, response.content
    entry = _entries(subscription).filter(action=LogEntry.Action.UPDATE).get()
    assert entry.actor == staff_user
    assert entry.changes["amount"] == ["10.000000000000000000", "12.500000000000000000"]
    assert entry.additional_data["via"] == "api"
    assert entry.additional_data["method"] == "PATCH"
    assert entry.remote_addr == "127.0.0.1"


def test_an_admin_edit_of_the_beat_schedule_is_recorded(client: Client, staff_user: Any) -> None:
    sync_periodic_tasks()
    task = PeriodicTask.objects.get(name="autopay: scan due subscriptions")
    client.force_login(staff_user)
    page = client.get(reverse("admin:django_celery_beat_periodictask_change", args=[task.pk]))
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update({"enabled": "", "description": "paused for maintenance", "_save": "Save"})
    for key in ("interval", "crontab", "solar", "clocked"):
        if data.get(key) is not None and hasattr(data[key], "pk"):
            data[key] = data[key].pk
    data.pop("start_time", None)
    data.pop("last_run_at", None)
    data.pop("expires", None)
    response = client.post(page.request["PATH_INFO"], data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    entry = _entries(task).filter(action=LogEntry.Action.UPDATE).last()
    assert entry is not None and entry.actor == staff_user
    assert entry.changes["enabled"] == [True, False]
    assert entry.additional_data["via"] == "admin"
    assert client.get("/admin/auditlog/logentry/").status_code == 200


def test_a_dashboard_retry_is_in_recent_actions_and_the_audit_log(
    staff_user: Any, user: Any, clean_redis: Any
) -> None:
    client = Client()
    client.force_login(staff_user)
    job = failed_job(SubscriptionFactory.create(owner=user))
    response = client.post(reverse("admin:autopay-dashboard-retry", args=[job.pk]))
    assert response.status_code == 302
    new_job = Job.objects.exclude(pk=job.pk).get()

    recent = AdminLogEntry.objects.get()
    assert recent.user == staff_user
    assert recent.object_id == str(job.pk)
    assert f"as job {new_job.pk}" in recent.get_change_message()
    index = client.get("/admin/").content.decode()
    assert "Recent actions" in index and str(job) in index

    created = _entries(new_job).get()
    assert created.action == LogEntry.Action.CREATE and created.actor == staff_user
    assert created.additional_data["via"] == "dashboard"
    reopened = _entries(job.payment).filter(action=LogEntry.Action.UPDATE).get()
    assert reopened.changes["status"] == ["failed", "pending"]


def test_admin_bulk_actions_write_recent_actions(
    client: Client, staff_user: Any, user: Any
) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    client.force_login(staff_user)
    client.post(
        "/admin/subscriptions/subscription/",
        {"action": "pause_selected", "_selected_action": [subscription.pk], "index": 0},
    )
    assert AdminLogEntry.objects.get().get_change_message() == "Paused."
    assert _entries(subscription).filter(actor=staff_user).exists()


@pytest.mark.django_db(transaction=True)
def test_a_management_command_is_recorded_with_who_ran_it(db: Any) -> None:
    sync_periodic_tasks()
    PeriodicTask.objects.filter(name="autopay: recover stalled jobs").update(enabled=False)
    db = connection.settings_dict
    user, host, port = db["USER"] or "postgres", db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    env = {**os.environ, "DATABASE_URL": f"postgres://{user}@{host}:{port}/{db['NAME']}"}
    subprocess.run(
        [sys.executable, "manage.py", "autopay_sync_schedule", "--force"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    task = PeriodicTask.objects.get(name="autopay: recover stalled jobs")
    assert task.enabled
    entry = _entries(task).filter(action=LogEntry.Action.UPDATE).get()
    assert entry.actor is None
    assert entry.additional_data["via"] == "command"
    assert entry.additional_data["command"] == "autopay_sync_schedule"
    assert entry.additional_data["argv"] == ["autopay_sync_schedule", "--force"]
    assert entry.additional_data["os_user"]
    assert entry.changes["enabled"] == [False, True]


def test_the_log_is_append_only(user: Any, staff_user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    entry = _entries(subscription).get()
    for statement in (
        "UPDATE auditlog_logentry SET object_repr = 'forged' WHERE id = %s",
        "DELETE FROM auditlog_logentry WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [entry.pk])
    assert LogEntry.objects.filter(pk=entry.pk, object_repr=entry.object_repr).exists()
    # Deleting a user is still possible: their entries keep everything but the actor.
    someone = UserFactory.create()
    LogEntry.objects.create(
        content_type=entry.content_type,
        object_pk=entry.object_pk,
        object_repr=entry.object_repr,
        action=LogEntry.Action.ACCESS,
        actor=someone,
    )
    someone.delete()
    assert LogEntry.objects.filter(action=LogEntry.Action.ACCESS, actor__isnull=True).exists()


def test_the_admin_cannot_change_or_delete_entries(
    client: Client, staff_user: Any, user: Any
) -> None:
    entry = _entries(SubscriptionFactory.create(owner=user)).get()
    client.force_login(staff_user)
    change = client.post(f"/admin/auditlog/logentry/{entry.pk}/change/", {"object_repr": "x"})
    delete = client.post(f"/admin/auditlog/logentry/{entry.pk}/delete/", {"post": "yes"})
    assert change.status_code in (302, 403) and delete.status_code == 403
    assert LogEntry.objects.filter(pk=entry.pk, object_repr=entry.object_repr).exists()


@pytest.mark.worker
@pytest.mark.timeout(120)
def test_the_engine_in_a_worker_is_not_audited(
    start_worker: Any, user: Any, clean_redis: Any, token_address: str
) -> None:
    """The worker fails the job (the payer holds no tokens: the customer's failure), records
    the payment's failure and moves the subscription to dunning: its writes are the engine's
    own record, not an operator's action."""
    start_worker()
    wallet = PayerWalletFactory.create(owner=user)  # never funded
    subscription = SubscriptionFactory.create(
        owner=user, wallet=wallet, payer_address=wallet.address, token_address=token_address
    )
    job = payment_trigger(subscription=subscription)
    before = LogEntry.objects.order_by("-pk").values_list("pk", flat=True).first()
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=Job.Status.FAILED).exists(), timeout=60)
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.FAILED
    assert Subscription.objects.get(pk=subscription.pk).status == Subscription.Status.PAST_DUE
    assert not LogEntry.objects.filter(pk__gt=before).exists()


def test_beat_run_bookkeeping_is_not_an_edit(db: Any) -> None:
    """Beat saves every task's run count and time after each run: not an operator's change."""
    sync_periodic_tasks()
    task = PeriodicTask.objects.get(name="autopay: recover stalled jobs")
    before = _entries(task).count()
    task.total_run_count += 1
    task.last_run_at = task.date_changed
    task.save()
    assert _entries(task).count() == before
