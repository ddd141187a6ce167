"""Signal handlers of the engine app."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_migrate
from django.dispatch import receiver


@receiver(post_migrate)
def _ensure_periodic_tasks(sender: Any, app_config: Any = None, **kwargs: Any) -> None:
    # Runs once per app after migrate; only act for ours, once the beat tables exist.
    if app_config is None or app_config.name != "autopay":
        return
    from django.db import connection

    # `migrate autopay` alone, or beat's tables migrated away: nothing to write into yet.
    if "django_celery_beat_periodictask" not in connection.introspection.table_names():
        return
    from autopay.schedule import sync_periodic_tasks

    sync_periodic_tasks()
