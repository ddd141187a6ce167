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
from eth_account import Account

from autopay.api.tokens import install_token, issue_token
from autopay.authorizations import (
    UploadedAuthorization,
    authorization_unsigned_list,
    authorization_upload,
    typed_data,
)
from autopay.chain.client import get_web3, token_balance
from autopay.devtools.anvil import ANVIL_DEV_KEYS
from autopay.devtools.contracts import mint
from autopay.devtools.management.commands._chain import minter_key
from core.networks import network_registry, use_network
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
# Pre-signed: a payer who keeps their own key (anvil's public dev account 3 stands in for a
# browser wallet here; the server never stores it) and signs the next periods in advance.
PRESIGNED_SERVICE = ("Demo Music (pre-signed, no key held)", "3.5", "minute", 10)
SELF_CUSTODY_PAYER_KEY = ANVIL_DEV_KEYS[3]
PRESIGNED_PERIODS = 12
# x402 HTTP: paid through the demo paid service's own endpoint (bin/run starts it).
PAID_SERVICE = ("Demo Paid API (x402 HTTP)", "5", "minute", 10, "/plans/pro")


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
        # Owned by the demo user too (a subscription only ever pays from its owner's wallet).
        queued.extend(self._presigned(demo_user, w3, key))
        queued.extend(self._paid_service(demo_user, wallets["demo payer (funded)"]))
        queued.extend(self._other_networks(demo_user, wallets["demo payer (funded)"], key))
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

    def _trigger(self, subscription: Subscription, token: str = "", *, new: bool) -> list[str]:
        # Only a subscription made by this run is triggered: later periods, and a failure,
        # are the scan's and the dunning schedule's (a restart queues nothing again).
        if not new or subscription.token_address != (token or settings.TOKEN_ADDRESS):
            return []
        try:
            return [str(payment_trigger(subscription=subscription).pk)]
        except (services.PaymentConflict, services.SubscriptionStateError):
            return []

    def _presigned(self, owner: Any, w3: Any, key: str) -> list[str]:
        """A pre-signed subscription whose payer signs the next periods (as a browser wallet
        would, from GET .../authorizations/unsigned) and uploads the signatures."""
        payer = Account.from_key(SELF_CUSTODY_PAYER_KEY)
        target = 500 * 10**settings.TOKEN_DECIMALS
        balance = token_balance(settings.TOKEN_ADDRESS, payer.address)
        if balance < target:
            mint(w3, settings.TOKEN_ADDRESS, key, payer.address, target - balance)
        service, amount, unit, count = PRESIGNED_SERVICE
        subscription = Subscription.objects.filter(owner=owner, service_name=service).first()
        new = subscription is None
        if subscription is None:
            subscription = services.subscription_create(
                owner=owner,
                service_name=service,
                mode=Subscription.Mode.PRESIGNED,
                payer_address=payer.address,
                recipient_address=DEMO_RECIPIENT,
                amount=Decimal(amount),
                token_address=settings.TOKEN_ADDRESS,
                network=settings.CHAIN_NETWORK,
                interval_unit=unit,
                interval_count=count,
            )
        if subscription.token_address != settings.TOKEN_ADDRESS or not subscription.is_chargeable:
            return []
        unsigned = [
            period
            for period in authorization_unsigned_list(
                subscription=subscription, count=PRESIGNED_PERIODS
            )
            if not period.signed
        ]
        if unsigned:
            uploads = []
            for period in unsigned:
                data = typed_data(period.authorization)
                signed = Account.sign_typed_data(payer.key, full_message=data)
                uploads.append(
                    UploadedAuthorization(
                        period_index=period.period_index,
                        signature="0x" + bytes(signed.signature).hex(),
                        message=data["message"],
                        domain=data["domain"],
                    )
                )
            authorization_upload(subscription=subscription, user=owner, items=uploads)
        return self._trigger(subscription, new=new)

    def _paid_service(self, owner: Any, wallet: PayerWallet) -> list[str]:
        """A subscription paid through the demo paid service's x402 endpoint."""
        base = settings.AUTOPAY_DEMO_PAID_SERVICE_URL
        if not base:
            return []
        service, amount, unit, count, path = PAID_SERVICE
        subscription = Subscription.objects.filter(owner=owner, service_name=service).first()
        new = subscription is None
        if subscription is None:
            subscription = services.subscription_create(
                owner=owner,
                service_name=service,
                payer_address=wallet.address,
                recipient_address=DEMO_RECIPIENT,
                amount=Decimal(amount),
                token_address=settings.TOKEN_ADDRESS,
                network=settings.CHAIN_NETWORK,
                interval_unit=unit,
                interval_count=count,
                wallet=wallet,
                resource_url=base.rstrip("/") + path,
            )
        return self._trigger(subscription, new=new)

    def _other_networks(self, owner: Any, wallet: PayerWallet, key: str) -> list[str]:
        """A subscription on each further network (AUTOPAY_NETWORKS), paid from the same
        wallet funded on that chain: one deployment, several chains."""
        queued: list[str] = []
        for network in network_registry().values():
            if network.network == settings.CHAIN_NETWORK or not network.token_address:
                continue
            with use_network(network):
                target = 1000 * 10**network.token_decimals
                balance = token_balance(network.token_address, wallet.address)
                if balance < target:
                    mint(get_web3(), network.token_address, key, wallet.address, target - balance)
            service = f"Demo Cloud Storage ({network.network})"
            subscription = Subscription.objects.filter(owner=owner, service_name=service).first()
            new = subscription is None
            if subscription is None:
                subscription = services.subscription_create(
                    owner=owner,
                    service_name=service,
                    payer_address=wallet.address,
                    recipient_address=DEMO_RECIPIENT,
                    amount=Decimal("7.5"),
                    token_address=network.token_address,
                    network=network.network,
                    interval_unit="month",
                    interval_count=1,
                    wallet=wallet,
                )
            queued.extend(self._trigger(subscription, network.token_address, new=new))
        return queued
