"""Create an API token for a user and print it once (deployments, operators, scripts).

    manage.py autopay_create_token alice                 # expires after API_TOKEN_TTL_HOURS
    manage.py autopay_create_token alice --ttl-hours 0   # never expires

stdout carries the token alone (for ``$(...)``); its prefix and expiry go to stderr. The
database keeps only its digest: the token cannot be shown again, only revoked.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from autopay.api.tokens import default_ttl, issue_token


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (shown this once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--ttl-hours",
            type=float,
            default=None,
            help="lifetime in hours (default API_TOKEN_TTL_HOURS; 0 = never expires)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(options["username"])
        except user_model.DoesNotExist as exc:
            raise CommandError(f"No user named {options['username']!r}.") from exc
        if not user.is_active:
            raise CommandError(f"User {options['username']!r} is inactive.")
        hours = options["ttl_hours"]
        if hours is not None and hours < 0:
            raise CommandError("--ttl-hours must be 0 (never expires) or more.")
        ttl = default_ttl() if hours is None else (timedelta(hours=hours) if hours else None)
        instance, token = issue_token(user, ttl)
        expiry = instance.expiry.isoformat() if instance.expiry else "never"
        self.stderr.write(f"prefix: {instance.token_key}  expires: {expiry}")
        self.stdout.write(token)
