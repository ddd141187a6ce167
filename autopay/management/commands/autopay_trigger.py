"""Trigger a subscription's payment now (the API's POST /api/subscriptions/{id}/trigger)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.services import payment_trigger
from subscriptions.models import Subscription
from subscriptions.services import PaymentConflict, SubscriptionStateError


class Command(BaseCommand):
    help = (
        "Create the payment job of a subscription's current due period and queue it. Prints the "
        "job id (only the id with --verbosity 0), or the reason it cannot be triggered."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("subscription_id", type=int, help="The subscription's id.")

    def handle(self, *args: Any, **options: Any) -> None:
        subscription_id: int = options["subscription_id"]
        subscription = Subscription.objects.filter(pk=subscription_id).first()
        if subscription is None:
            raise CommandError(f"Subscription {subscription_id} not found.")
        try:
            job = payment_trigger(subscription=subscription)
        except (SubscriptionStateError, PaymentConflict) as exc:
            raise CommandError(f"Subscription {subscription_id} was not triggered: {exc}") from exc
        if options["verbosity"] == 0:
            self.stdout.write(str(job.pk))
            return
        period_start = job.payment.period_start
        self.stdout.write(
            self.style.SUCCESS(
                f"Job {job.pk} queued for subscription {subscription_id} "
                f"(payment {job.payment_id}, period starting {period_start:%Y-%m-%d %H:%M} UTC)."
            )
        )
