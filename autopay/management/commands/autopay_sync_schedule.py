"""Create the engine's periodic tasks in django-celery-beat (migrate does this too)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from autopay.beat import sync_periodic_tasks


class Command(BaseCommand):
    help = "Create missing beat rows; --force resets existing ones to the settings."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--force", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        changed = sync_periodic_tasks(force=options["force"])
        self.stdout.write(", ".join(changed) if changed else "beat schedule already in place")
