"""Demo data for the local system: an operator (staff, for the admin), a demo user (not staff:
the integrator whose API token bin/run prints) with funded payer wallets and subscriptions.

Idempotent: running it again reuses what the last run created and tops wallets up. Only the
subscriptions it creates are triggered; later periods, and a payment that failed (the
low-balance one), are left to the scan and the dunning schedule, so a restart never queues the
demo failure again.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from autopay.api.tokens import install_token, issue_token
from autopay.chain.client import get_web3, token_balance
from autopay.devtools.contracts import mint
from autopay.devtools.management.commands._chain import minter_key
from jobs.services import payment_trigger
from subscriptions import services
from subscriptions.models import PayerWallet, Subscription
from subscriptions.services import wallet_create

DEMO_SUBSCRIPTIONS = [
    # service, amount, unit, count, wallet label
    ("Demo Cloud Storage", "9.99", "month", 1, "demo payer (funded)"),
    ("Demo News Pro", "4.5", "minute", 5, "demo payer (funded)"),
    ("Demo Video Plus", "15", "month", 1, "demo payer (funded)"),
    ("Demo Gym (low balance)", "250", "month", 1, "demo payer (low balance)"),
]
FUNDING = {"demo payer (funded)": Decimal("1000"), "demo payer (low balance)": Decimal("20")}
# The demo services are paid to anvil's dev account 9 (a public test address).
DEMO_RECIPIENT = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"


class Command(BaseCommand):
    help = "Create the demo operator, funded payer wallets and due subscriptions."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="operator", help="the operator (staff)")
        parser.add_argument("--password", required=True, help="the operator's password")
        parser.add_argument(
            "--user", default="demo", help="the demo user (not staff) who owns the demo data"
        )
        parser.add_argument(
            "--token",
            default="",
            help="the demo user's API token to keep valid (bin/run's, reused each run); "
            "without it a new token is created",
        )
        parser.add_argument("--json", action="store_true", help="print credentials as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.TOKEN_ADDRESS:
            raise CommandError("TOKEN_ADDRESS is not set; deploy the token first.")
        user_model = get_user_model()
        operator, _ = user_model.objects.get_or_create(
            username=options["username"], defaults={"email": "operator@example.test"}
        )
        operator.is_staff = operator.is_superuser = True
        operator.set_password(options["password"])
        operator.save()
        # The integrator: sees only their own wallets, subscriptions, payments and jobs.
        demo_user, created = user_model.objects.get_or_create(
            username=options["user"], defaults={"email": "demo@example.test"}
        )
        if created:
            demo_user.set_unusable_password()
            demo_user.save()
        if demo_user.is_staff or demo_user.is_superuser:
            raise CommandError(f"--user {demo_user.username} is staff; the demo user is not")
        # Stored hashed: the token is printed here, never readable from the database.
        if options["token"]:
            try:
                install_token(demo_user, options["token"])
            except ValueError as exc:
                raise CommandError(f"--token: {exc}") from exc
            token = options["token"]
        else:
            token = issue_token(demo_user)[1]

        w3 = get_web3()
        key = minter_key(None)
        wallets: dict[str, PayerWallet] = {}
        for label, target in FUNDING.items():
            wallet = PayerWallet.objects.filter(owner=demo_user, label=label).first()
            wallet = wallet or wallet_create(owner=demo_user, label=label)
            wallets[label] = wallet
            target_atomic = int(target.scaleb(settings.TOKEN_DECIMALS))
            balance = token_balance(settings.TOKEN_ADDRESS, wallet.address)
            if balance < target_atomic:
                mint(w3, settings.TOKEN_ADDRESS, key, wallet.address, target_atomic - balance)

        queued = []
        for service, amount, unit, count, label in DEMO_SUBSCRIPTIONS:
            wallet = wallets[label]
            if Subscription.objects.filter(owner=demo_user, service_name=service).exists():
                continue  # made by an earlier run: the scan and dunning take it from here
            subscription = services.subscription_create(
                owner=demo_user,
                service_name=service,
                payer_address=wallet.address,
                recipient_address=DEMO_RECIPIENT,
                amount=Decimal(amount),
                token_address=settings.TOKEN_ADDRESS,
                network=settings.CHAIN_NETWORK,
                interval_unit=unit,
                interval_count=count,
                wallet=wallet,
            )
            try:
                job = payment_trigger(subscription=subscription)
                queued.append(str(job.pk))
            except (services.PaymentConflict, services.SubscriptionStateError):
                pass
        result = {
            "user": demo_user.username,
            "token": token,
            "username": operator.username,
            "password": options["password"],
            "wallets": {label: wallet.address for label, wallet in wallets.items()},
            "queued_jobs": queued,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            for field, value in result.items():
                self.stdout.write(f"{field}: {value}")
