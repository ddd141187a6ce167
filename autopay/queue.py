"""Publishing job messages. A message carries a job id only; the database holds the job."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from uuid import UUID

from django.db import transaction

logger = logging.getLogger(__name__)

PROCESS_TASK = "autopay.process_autopay_job"


def publish_jobs(job_ids: Iterable[UUID | str], *, countdown: float | None = None) -> int:
    """Publish one process message per job over a single broker connection."""
    from config.celery import app

    published = 0
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(PROCESS_TASK, args=[str(job_id)], countdown=countdown, producer=producer)
            published += 1
    return published


def publish_jobs_on_commit(job_ids: Iterable[UUID | str]) -> None:
    """Publish after the surrounding transaction commits, so a worker never sees a missing row.

    A failed publish is logged, not raised: the job row is already durable and the recovery
    task republishes waiting jobs whose message was lost.
    """
    ids = [str(job_id) for job_id in job_ids]
    if not ids:
        return

    def _publish() -> None:
        try:
            publish_jobs(ids)
        except Exception:
            logger.exception(
                "publishing %d job message(s) failed; recovery will republish", len(ids)
            )

    transaction.on_commit(_publish)
