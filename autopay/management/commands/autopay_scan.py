"""Run the due-payment scan now (what celery beat runs every few minutes)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from autopay.scan import scan_due


class Command(BaseCommand):
    help = (
        "Find due billing periods and dunning retries now, create their payments and jobs, and "
        "publish the jobs to the broker. Safe to run beside the scheduler: every write is "
        "idempotent in the database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-publish",
            action="store_true",
            help=(
                "Create the jobs without publishing them (they stay waiting; the recovery task "
                "publishes waiting jobs whose message is missing)."
            ),
        )
        parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        summary = scan_due(publish=not options["no_publish"])
        if options["json"]:
            self.stdout.write(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Scan done in {summary.seconds:.3f} s: {summary.subscriptions} due "
                f"subscription(s), {summary.payments_created} payment(s) created, "
                f"{summary.jobs_created} job(s) created ({summary.dunning_retries} dunning "
                f"retr{'y' if summary.dunning_retries == 1 else 'ies'}), "
                f"{summary.jobs_published} published, {summary.batches} batch(es)."
            )
        )
        if options["no_publish"] and summary.jobs_created:
            self.stdout.write(
                self.style.WARNING("Jobs were not published (--no-publish); they stay waiting.")
            )
        if summary.publish_errors:
            self.stdout.write(
                self.style.WARNING(
                    f"{summary.publish_errors} publish error(s): the jobs are saved and the "
                    "recovery task will publish them again."
                )
            )
