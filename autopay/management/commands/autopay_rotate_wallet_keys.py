"""Re-encrypt every payer wallet's key (and every webhook endpoint's signing secret) with the
newest key of AUTOPAY_KEY_ENCRYPTION_KEYS.

Rotation: put the new key first in AUTOPAY_KEY_ENCRYPTION_KEYS (keep the old one after it),
restart web and workers, run this command, then remove the old key. Safe to run again or to
interrupt: each wallet is rewritten on its own, and one already on the newest key is left
as it is.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from tqdm import tqdm

from subscriptions.custody import KeyCustodyError, reencrypt_private_key
from subscriptions.models import PayerWallet
from subscriptions.webhooks.services import webhook_secrets_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt every payer wallet key with the newest AUTOPAY_KEY_ENCRYPTION_KEYS key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-progress", action="store_true", help="Do not draw a progress bar."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        wallet_ids = list(PayerWallet.objects.order_by("pk").values_list("pk", flat=True))
        rotated = unchanged = 0
        unreadable: list[int] = []
        bar = tqdm(
            wallet_ids,
            desc="re-encrypting wallets",
            unit="wallet",
            file=sys.stderr,
            disable=options["no_progress"] or not wallet_ids,
        )
        for wallet_id in bar:
            try:
                with transaction.atomic():
                    wallet = PayerWallet.objects.select_for_update().get(pk=wallet_id)
                    token = reencrypt_private_key(wallet.encrypted_private_key)
                    if token is None:
                        unchanged += 1
                        continue
                    PayerWallet.objects.filter(pk=wallet_id).update(encrypted_private_key=token)
                    rotated += 1
            except ImproperlyConfigured as exc:
                raise CommandError(str(exc)) from exc
            except KeyCustodyError:
                unreadable.append(wallet_id)
        self.stdout.write(
            f"{rotated} wallet(s) re-encrypted with the newest key, {unchanged} already on it."
        )
        try:
            endpoints = webhook_secrets_reencrypt()
        except KeyCustodyError as exc:
            raise CommandError(
                "a webhook signing secret could not be decrypted with any configured key; "
                "keep its old key in AUTOPAY_KEY_ENCRYPTION_KEYS."
            ) from exc
        self.stdout.write(f"{endpoints} webhook endpoint(s) re-encrypted with the newest key.")
        if unreadable:
            listed = ", ".join(str(pk) for pk in unreadable[:20])
            raise CommandError(
                f"{len(unreadable)} wallet(s) could not be decrypted with any configured key "
                f"(ids {listed}); keep their old key in AUTOPAY_KEY_ENCRYPTION_KEYS."
            )
