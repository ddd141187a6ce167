"""factory_boy factories for every model, in one place."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import factory
from django.contrib.auth.models import User
from django.utils import timezone
from eth_account import Account

from jobs.models import Job, JobAttempt
from subscriptions.custody import encrypt_private_key
from subscriptions.models import PayerWallet, Payment, Subscription
from subscriptions.services import payment_build


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


def failed_job(
    subscription: Subscription,
    *,
    index: int = 0,
    code: str = "insufficient_balance",
    ago: timedelta = timedelta(minutes=5),
) -> Job:
    """A failed job on a failed payment of ``subscription``'s ``index``-th period."""
    payment = Payment.objects.filter(subscription=subscription, period_index=index).first()
    if payment is None:
        payment = payment_build(subscription=subscription, index=index)
    payment.status = Payment.Status.FAILED
    payment.error_code = code
    payment.save()
    return Job.objects.create(
        subscription=subscription,
        payment=payment,
        status=Job.Status.FAILED,
        error_code=code,
        error=f"failed with {code}",
        attempts_made=1,
        finished_at=timezone.now() - ago,
    )


def settled_payment(
    subscription: Subscription,
    *,
    index: int,
    transaction_hash: str,
    amount: str = "7.5",
    gas_used: int = 120000,
    fee_wei: int = 240_000_000_000_000,
) -> Payment:
    """A payment completed in ``transaction_hash`` (block 7), with its completed job and the
    attempt that recorded the transaction's gas and fee (the attempts ledger)."""
    payment = payment_build(subscription=subscription, index=index)
    payment.amount = Decimal(amount)
    payment.status = Payment.Status.COMPLETED
    payment.transaction_hash = transaction_hash
    payment.block_number = 7
    payment.completed_at = timezone.now()
    payment.valid_after = 1_767_225_600  # 2026-01-01 00:00:00 UTC
    payment.valid_before = 1_767_229_200
    payment.save()
    job = Job.objects.create(
        subscription=subscription, payment=payment, status=Job.Status.COMPLETED, progress=100
    )
    JobAttempt.objects.create(
        job=job,
        number=1,
        outcome=JobAttempt.Outcome.COMPLETED,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        transaction_hashes=[transaction_hash],
        gas_used=gas_used,
        fee_wei=Decimal(fee_wei),
    )
    return payment
