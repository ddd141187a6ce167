"""Print a fresh AUTOPAY_KEY_ENCRYPTION_KEY (Fernet key) to keep in your secret store."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from subscriptions.custody import generate_encryption_key


class Command(BaseCommand):
    help = "Print a new key for AUTOPAY_KEY_ENCRYPTION_KEY."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(generate_encryption_key())
