"""Delete audit-log entries older than N days, on purpose and on the record (autopay.audit):
the only way entries leave the append-only table; the pruning writes an entry of its own."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from autopay.audit import audit_prune


class Command(BaseCommand):
    help = "Delete audit-log entries older than --older-than-days days (recorded in the log)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than-days",
            type=int,
            required=True,
            help="Entries older than this many days are deleted (at least 1).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["older_than_days"]
        if days < 1:
            raise CommandError(f"--older-than-days must be at least 1, not {days}.")
        before = timezone.now() - timedelta(days=days)
        deleted = audit_prune(before=before)
        self.stdout.write(f"Deleted {deleted} audit entries written before {before.isoformat()}.")
