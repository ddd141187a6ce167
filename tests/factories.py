"""factory_boy factories for every model, in one place."""

from __future__ import annotations

from decimal import Decimal

import factory
from django.contrib.auth.models import User
from django.utils import timezone
from eth_account import Account

from autopay.custody import encrypt_private_key
from autopay.models import PayerWallet
from subscriptions.models import Subscription


def new_address() -> str:
    return str(Account.create().address)


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.test")
    password = factory.django.Password("correct-horse-battery")


class PayerWalletFactory(factory.django.DjangoModelFactory[PayerWallet]):
    """A server-held wallet. ``account`` gives tests the key to inspect balances."""

    class Meta:
        model = PayerWallet
        exclude = ("account",)

    owner = factory.SubFactory(UserFactory)
    account = factory.LazyFunction(Account.create)
    address = factory.LazyAttribute(lambda wallet: wallet.account.address)
    encrypted_private_key = factory.LazyAttribute(
        lambda wallet: encrypt_private_key(bytes(wallet.account.key))
    )


class SubscriptionFactory(factory.django.DjangoModelFactory[Subscription]):
    class Meta:
        model = Subscription

    owner = factory.SubFactory(UserFactory)
    service_name = factory.Sequence(lambda n: f"Service {n}")
    payer_address = factory.LazyFunction(new_address)
    recipient_address = factory.LazyFunction(new_address)
    amount = Decimal("10.00")
    token_address = factory.LazyFunction(new_address)
    token_decimals = 6
    network = "eip155:31337"
    interval_unit = Subscription.IntervalUnit.MONTH
    interval_count = 1
    billing_anchor = factory.LazyFunction(timezone.now)
    next_payment_due_at = factory.LazyAttribute(lambda sub: sub.billing_anchor)
    next_period_index = 0
    next_period_due_at = factory.LazyAttribute(lambda sub: sub.billing_anchor)
    auto_pay_enabled = True
    status = Subscription.Status.ACTIVE
