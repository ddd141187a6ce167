"""What the chaos tests do inside the stack under test, run as ``python -m tests.chaos.tool``
with the stack's environment (its own PostgreSQL, Redis and chain): create load, trigger,
deliver messages again, change the scan's beat interval. Prints JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import django


def _seed(args: argparse.Namespace) -> dict[str, Any]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.utils import timezone
    from eth_account import Account

    from autopay.chain.client import get_web3
    from autopay.devtools.anvil import ANVIL_DEV_KEYS
    from autopay.devtools.contracts import mint
    from jobs.services import payment_trigger
    from subscriptions.services import subscription_create, wallet_create

    owner = get_user_model().objects.create(username=f"chaos-{uuid.uuid4().hex[:10]}")
    amount = Decimal(args.amount)
    per_wallet = -(-args.count // args.wallets)
    w3 = get_web3()
    wallets = []
    for index in range(args.wallets):
        wallet = wallet_create(owner=owner, label=f"chaos {index}")
        funding = int((amount * per_wallet + 1).scaleb(settings.TOKEN_DECIMALS))
        mint(w3, settings.TOKEN_ADDRESS, ANVIL_DEV_KEYS[0], wallet.address, funding)
        wallets.append(wallet)
    anchor = timezone.now() - timedelta(minutes=1)
    rows = []
    for index in range(args.count):
        wallet = wallets[index % len(wallets)]
        subscription = subscription_create(
            owner=owner,
            service_name=f"chaos {index}",
            payer_address=wallet.address,
            recipient_address=str(Account.create().address),
            amount=amount,
            token_address=settings.TOKEN_ADDRESS,
            network=settings.CHAIN_NETWORK,
            interval_unit="month",
            interval_count=1,
            billing_anchor=anchor,
            wallet=wallet,
        )
        job_id = None
        if not args.no_trigger:
            job_id = str(payment_trigger(subscription=subscription).pk)
        rows.append(
            {
                "id": subscription.pk,
                "recipient": subscription.recipient_address,
                "amount_atomic": subscription.amount_atomic,
                "job": job_id,
            }
        )
    return {"subscriptions": rows}


def _trigger(args: argparse.Namespace) -> dict[str, Any]:
    from jobs.services import payment_trigger
    from subscriptions.models import Subscription

    jobs = {}
    for subscription in Subscription.objects.filter(pk__in=args.ids).order_by("pk"):
        jobs[subscription.pk] = str(payment_trigger(subscription=subscription).pk)
    return {"jobs": jobs}


def _duplicate(args: argparse.Namespace) -> dict[str, Any]:
    from jobs.models import Job
    from jobs.queue import publish_jobs

    ids = [
        str(job_id)
        for job_id in Job.objects.filter(
            subscription_id__in=args.ids, status__in=Job.OPEN_STATUSES
        ).values_list("pk", flat=True)
    ]
    return {"published": publish_jobs(ids * args.times)}


def _scan_interval(args: argparse.Namespace) -> dict[str, Any]:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    schedule, _ = IntervalSchedule.objects.get_or_create(
        every=args.seconds, period=IntervalSchedule.SECONDS
    )
    task = PeriodicTask.objects.get(task="autopay.scan_due_subscriptions")
    task.interval = schedule
    task.save()  # through the model: running beats notice the change
    return {"scan_every": args.seconds}


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    parser = argparse.ArgumentParser(prog="tests.chaos.tool")
    commands = parser.add_subparsers(dest="command", required=True)
    seed = commands.add_parser("seed")
    seed.add_argument("--count", type=int, required=True)
    seed.add_argument("--amount", default="1.25")
    seed.add_argument("--wallets", type=int, default=4)
    seed.add_argument("--no-trigger", action="store_true")
    trigger = commands.add_parser("trigger")
    trigger.add_argument("ids", type=int, nargs="+")
    duplicate = commands.add_parser("duplicate")
    duplicate.add_argument("--times", type=int, default=4)
    duplicate.add_argument("ids", type=int, nargs="+")
    interval = commands.add_parser("scan-interval")
    interval.add_argument("seconds", type=int)
    args = parser.parse_args(argv)
    handler = {
        "seed": _seed,
        "trigger": _trigger,
        "duplicate": _duplicate,
        "scan-interval": _scan_interval,
    }[args.command]
    print(json.dumps(handler(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
