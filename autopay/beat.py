"""The periodic tasks that beat runs, kept in django-celery-beat's tables.

They are created by the project (after every migrate), never by hand; operators may then edit
them in the admin. A row that exists is left alone unless ``force`` is given, so an operator's
change survives deploys; `manage.py autopay_sync_schedule --force` resets them to settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask


@dataclass(frozen=True)
class PeriodicSpec:
    name: str
    task: str
    every_seconds: int
    description: str


def periodic_specs() -> list[PeriodicSpec]:
    return [
        PeriodicSpec(
            name="autopay: scan due subscriptions",
            task="autopay.scan_due_subscriptions",
            every_seconds=settings.AUTOPAY_SCAN_INTERVAL_MINUTES * 60,
            description="Finds due billing periods and queues one payment job per period.",
        ),
        PeriodicSpec(
            name="autopay: recover stalled jobs",
            task="autopay.recover_jobs",
            every_seconds=settings.AUTOPAY_RECOVERY_INTERVAL_SECONDS,
            description="Reconciles uncertain payments by chain and re-verifies completed "
            "payments until final (reorgs); backs up the workers' dispatchers.",
        ),
        PeriodicSpec(
            name="autopay: purge completed jobs",
            task="autopay.purge_completed_jobs",
            every_seconds=3600,
            description="Deletes completed jobs older than the retention; failed jobs are kept.",
        ),
        PeriodicSpec(
            name="autopay: dispatch webhooks",
            task="autopay.dispatch_webhooks",
            every_seconds=settings.WEBHOOK_DISPATCH_INTERVAL_SECONDS,
            description="Sends due webhook retries and republishes lost delivery messages.",
        ),
        PeriodicSpec(
            name="autopay: purge expired records",
            task="autopay.purge_expired_records",
            every_seconds=3600,
            description="Deletes expired idempotency keys and webhook events past retention.",
        ),
    ]


def sync_periodic_tasks(*, force: bool = False) -> list[str]:
    """Create the engine's beat rows if missing (or reset them with ``force``).

    Returns the names of the rows created or reset. The rows name no queue: beat then sends
    to the default queue of the moment (``CELERY_QUEUE``), so a renamed queue cannot strand
    the scan on a queue no worker reads.
    """
    changed = []
    with transaction.atomic():
        for spec in periodic_specs():
            schedule = _interval_schedule(spec.every_seconds)
            task = PeriodicTask.objects.filter(name=spec.name).first()
            if task is None:
                PeriodicTask.objects.create(
                    name=spec.name, task=spec.task, interval=schedule, description=spec.description
                )
                changed.append(spec.name)
            elif force and not _matches(task, spec, schedule):
                task.task = spec.task
                task.interval = schedule
                task.crontab = task.solar = task.clocked = None
                task.enabled = True
                task.one_off = False
                task.start_time = task.expires = None
                task.expire_seconds = None
                task.queue = task.exchange = task.routing_key = None
                task.save()
                changed.append(spec.name)
    return changed


def _interval_schedule(every_seconds: int) -> Any:
    """The interval row for ``every_seconds``; operators may have created duplicates in the
    admin (the table has no unique constraint), so take the oldest rather than fail."""
    existing = (
        IntervalSchedule.objects.filter(every=every_seconds, period=IntervalSchedule.SECONDS)
        .order_by("pk")
        .first()
    )
    return existing or IntervalSchedule.objects.create(
        every=every_seconds, period=IntervalSchedule.SECONDS
    )


def _matches(task: Any, spec: PeriodicSpec, schedule: Any) -> bool:
    return (
        task.task == spec.task
        and task.interval_id == schedule.pk
        and task.crontab_id is None
        and task.solar_id is None
        and task.clocked_id is None
        and task.enabled
        and not task.one_off
        and task.start_time is None
        and task.expires is None
        and task.expire_seconds is None
        and not task.queue
        and not task.exchange
        and not task.routing_key
    )
