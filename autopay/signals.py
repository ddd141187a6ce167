"""Signal handlers of the engine app."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import beat_init, worker_init, worker_process_init, worker_ready
from django.db import connection, connections
from django.db.models.signals import post_migrate
from django.dispatch import receiver

from autopay.beat import sync_periodic_tasks
from autopay.configuration import configuration_problems
from core.audit import audit_off

logger = logging.getLogger(__name__)


@receiver(post_migrate)
def _ensure_periodic_tasks(sender: Any, app_config: Any = None, **kwargs: Any) -> None:
    # Runs once per app with models after migrate; act once, for the app whose tables the
    # schedule is written into (the engine app has no models of its own).
    if app_config is None or app_config.label != "django_celery_beat":
        return
    # Beat's tables migrated away (migrate ... zero): nothing to write into.
    if "django_celery_beat_periodictask" not in connection.introspection.table_names():
        return
    sync_periodic_tasks()


@worker_init.connect
@worker_process_init.connect
@beat_init.connect
def _no_audit_in_workers(**kwargs: Any) -> None:
    """The engine's writes (payments, jobs, beat's run counts) are its own record, not an
    operator's action."""
    audit_off()


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
