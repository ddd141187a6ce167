"""Signal handlers of the engine app."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready
from django.db import connections
from django.db.models.signals import post_migrate
from django.dispatch import receiver

from autopay.configuration import configuration_problems

logger = logging.getLogger(__name__)


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


@worker_ready.connect
def _report_configuration(**kwargs: Any) -> None:
    """One clear line at start-up when payments cannot be made; the jobs themselves wait."""
    try:
        problems = configuration_problems()
    except Exception:
        logger.exception("could not check the payment configuration at start-up")
        return
    finally:
        # The worker's main process does not use the database: no connection kept open.
        connections.close_all()
    if problems:
        logger.error(
            "payments are misconfigured, jobs will wait until this is fixed: %s",
            "; ".join(problems),
        )
    else:
        logger.info("payment configuration: ok")
