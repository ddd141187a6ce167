"""Read-side queries for jobs: scoped lists and queue statistics."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from jobs.models import Job
from jobs.queue import broker_queue_length

logger = logging.getLogger(__name__)


def job_list(*, user: Any) -> QuerySet[Job]:
    queryset = Job.objects.select_related("payment", "subscription")
    if user.is_staff:
        return queryset
    return queryset.filter(subscription__owner=user)


def job_stats(*, user: Any) -> dict[str, Any]:
    """Counts by status (baseline's getWaitingCount & co.) plus queue health figures."""
    queryset = job_list(user=user)
    counts = {value: 0 for value in Job.Status.values}
    for row in queryset.order_by().values("status").annotate(total=Count("pk")):
        counts[row["status"]] = row["total"]
    now = timezone.now()
    oldest_waiting = queryset.filter(status=Job.Status.WAITING).aggregate(oldest=Min("created_at"))[
        "oldest"
    ]
    rates: dict[str, Any] = {}
    for label, window in (("lastHour", timedelta(hours=1)), ("lastDay", timedelta(days=1))):
        finished = queryset.filter(
            status__in=[Job.Status.COMPLETED, Job.Status.FAILED], finished_at__gte=now - window
        ).aggregate(
            completed=Count("pk", filter=Q(status=Job.Status.COMPLETED)),
            failed=Count("pk", filter=Q(status=Job.Status.FAILED)),
        )
        total = finished["completed"] + finished["failed"]
        rates[label] = {
            "completed": finished["completed"],
            "failed": finished["failed"],
            "failureRate": round(finished["failed"] / total, 4) if total else 0.0,
        }
    return {
        "counts": counts,
        "total": sum(counts.values()),
        # The broker's queue holds every user's work: only staff see its length.
        "queueLength": broker_queue_length() if user.is_staff else None,
        "oldestWaitingAt": oldest_waiting.isoformat() if oldest_waiting else None,
        "oldestWaitingAgeSeconds": (
            round((now - oldest_waiting).total_seconds(), 1) if oldest_waiting else None
        ),
        "finished": rates,
    }
