"""Queue statistics for operators: jobs by status, broker queue length, oldest waiting job,
failure rates over the last hour and day (the figures of GET /api/jobs/stats)."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from jobs.analytics import OPERATOR_SCOPE
from jobs.dashboard import format_age
from jobs.selectors import job_stats


class Command(BaseCommand):
    help = (
        "Print job queue statistics: counts by status, broker queue length, oldest waiting "
        "job and failure rates (last hour, last day)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print the statistics as JSON (the shape of GET /api/jobs/stats's data).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stats = job_stats(user=OPERATOR_SCOPE)
        if options["json"]:
            self.stdout.write(json.dumps(stats, indent=2, sort_keys=True))
            return

        self.stdout.write(self.style.MIGRATE_HEADING("Jobs by status"))
        width = max(len(status) for status in [*stats["counts"], "total"])
        for status, count in stats["counts"].items():
            line = f"  {status:<{width}}  {count:>8}"
            self.stdout.write(self.style.ERROR(line) if status == "failed" and count else line)
        self.stdout.write(f"  {'total':<{width}}  {stats['total']:>8}")

        queue = settings.CELERY_TASK_DEFAULT_QUEUE
        if stats["queueLength"] is None:
            self.stdout.write(
                self.style.WARNING(f"Broker queue {queue!r}: unavailable (broker unreachable)")
            )
        else:
            self.stdout.write(f"Broker queue {queue!r}: {stats['queueLength']} message(s)")

        if stats["oldestWaitingAt"] is None:
            self.stdout.write("Oldest waiting job: none")
        else:
            age = format_age(stats["oldestWaitingAgeSeconds"])
            self.stdout.write(f"Oldest waiting job: {age} old (since {stats['oldestWaitingAt']})")

        for key, label in (("lastHour", "last hour"), ("lastDay", "last 24 hours")):
            finished = stats["finished"][key]
            total = finished["completed"] + finished["failed"]
            self.stdout.write(
                f"Failure rate, {label}: {finished['failureRate'] * 100:.1f} % "
                f"({finished['failed']} failed of {total} finished)"
            )
