"""The periodic tasks that beat runs, kept in django-celery-beat's tables.

They are created by the project (after every migrate), never by hand; operators may then edit
them in the admin. A row that exists is left alone unless ``force`` is given, so an operator's
change survives deploys; `manage.py autopay_sync_schedule --force` resets them to settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction


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
            description="Takes back jobs whose worker died and reconciles uncertain payments.",
        ),
        PeriodicSpec(
            name="autopay: purge completed jobs",
            task="autopay.purge_completed_jobs",
            every_seconds=3600,
            description="Deletes completed jobs older than the retention; failed jobs are kept.",
        ),
    ]


def sync_periodic_tasks(*, force: bool = False) -> list[str]:
    """Create the engine's beat rows if missing (or reset them with ``force``)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    changed = []
    with transaction.atomic():
        for spec in periodic_specs():
            schedule, _ = IntervalSchedule.objects.get_or_create(
                every=spec.every_seconds, period=IntervalSchedule.SECONDS
            )
            task = PeriodicTask.objects.filter(name=spec.name).first()
            if task is None:
                PeriodicTask.objects.create(
                    name=spec.name,
                    task=spec.task,
                    interval=schedule,
                    description=spec.description,
                    queue=settings.CELERY_TASK_DEFAULT_QUEUE,
                )
                changed.append(spec.name)
            elif force and (
                task.interval_id != schedule.pk or task.task != spec.task or not task.enabled
            ):
                task.interval = schedule
                task.task = spec.task
                task.enabled = True
                task.crontab = None
                task.save()
                changed.append(spec.name)
    return changed
