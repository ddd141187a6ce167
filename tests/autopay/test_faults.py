"""Faults that are never the customer's, on a live anvil, PostgreSQL and Redis: an RPC outage
before the broadcast, a relayer without ETH in a pool, a pool with none funded. Each job waits
(its attempts unspent), the subscription stays as it was, and the payment is made once the
fault is gone; the customer is charged exactly once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from eth_account import Account
from web3 import Web3

from autopay import engine, funding
from autopay.chain import relayer as relayer_module
from autopay.chain.client import token_balance
from autopay.devtools.anvil import ANVIL_DEV_KEYS
from jobs.models import Job, JobAttempt
from jobs.services import payment_trigger
from subscriptions.custody import encrypt_private_key
from subscriptions.models import Payment, Subscription
from subscriptions.webhooks.models import WebhookEndpoint, WebhookEvent
from tests.factories import UserFactory
from tests.infra import RpcProxy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]

ONE_ETH = 10**18


def _due_now(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(next_attempt_at=timezone.now())


def _process(job: Job) -> str:
    _due_now(job)
    return engine.process_job(job_id=str(job.pk), worker_id="faults-test").status


def _set_eth(w3: Web3, address: str, wei: int) -> None:
    w3.provider.make_request("anvil_setBalance", [address, hex(wei)])  # type: ignore[arg-type]


def test_an_rpc_outage_before_the_broadcast_waits_then_pays_once(
    rpc: RpcProxy, paying_subscription: Any, token_address: str, w3: Web3
) -> None:
    subscription = paying_subscription(amount="3")
    payer = subscription.payer_address
    before = token_balance(token_address, payer, w3=w3)
    job = payment_trigger(subscription=subscription)

    rpc.down = True
    # More tries than the job has attempts: none of them is spent on the outage.
    outcomes = [_process(job) for _ in range(job.max_attempts + 2)]

    job.refresh_from_db()
    assert outcomes == ["delayed"] * (job.max_attempts + 2)
    assert (job.status, job.error_code, job.attempts_made) == (
        Job.Status.DELAYED,
        "rpc_unavailable",
        0,
    )
    assert set(job.attempts.values_list("outcome", flat=True)) == {JobAttempt.Outcome.WAITING}
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status != Payment.Status.FAILED
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    assert subscription.dunning_next_retry_at is None

    rpc.down = False
    assert _process(job) == "completed"
    payment.refresh_from_db()
    assert payment.status == Payment.Status.COMPLETED
    assert token_balance(token_address, payer, w3=w3) == before - 3 * 10**6


@pytest.fixture
def pool(engine_settings: Any) -> list[str]:
    """A pool of two relayers of the default chain, each with ETH to start with."""
    keys = ANVIL_DEV_KEYS[5:7]
    engine_settings.RELAYER_PRIVATE_KEYS = keys
    engine_settings.RELAYER_OUT_OF_POOL_SECONDS = 60
    relayer_module._relayers.clear()
    relayer_module._balance_checked.clear()
    relayer_module._out_locally.clear()
    funding._cache.clear()
    return [str(Account.from_key(key).address) for key in keys]


@pytest.fixture
def operator_endpoint(db: Any) -> Any:
    """A staff user's webhook endpoint (operator events go to staff only), and an ordinary
    user's endpoint that asks for every event type too."""
    staff = UserFactory.create(is_staff=True)
    ordinary = UserFactory.create()
    for owner in (staff, ordinary):
        # Disabled: events are kept, nothing is sent (no receiver runs here).
        WebhookEndpoint.objects.create(
            owner=owner,
            url="https://hooks.example.com/autopay",
            enabled=False,
            encrypted_secret=encrypt_private_key(b"secret"),
        )
    return staff, ordinary


def test_an_unfunded_relayer_leaves_the_pool_and_no_customer_is_failed(
    pool: list[str],
    operator_endpoint: Any,
    paying_subscription: Any,
    token_address: str,
    w3: Web3,
    client: Client,
) -> None:
    dry, funded = pool
    _set_eth(w3, dry, 0)
    staff, _ordinary = operator_endpoint
    subscriptions = [paying_subscription(amount="1") for _ in range(6)]
    payers = {
        sub.pk: token_balance(token_address, sub.payer_address, w3=w3) for sub in subscriptions
    }
    try:
        jobs = [payment_trigger(subscription=sub) for sub in subscriptions]
        outcomes = [_process(job) for job in jobs]

        assert outcomes == ["completed"] * len(jobs), outcomes
        senders = {
            w3.eth.get_transaction(payment.transaction_hash)["from"]  # type: ignore[arg-type]
            for payment in Payment.objects.filter(subscription__in=subscriptions)
        }
        assert senders == {funded}, "every payment went out from the funded relayer"
        assert not Subscription.objects.exclude(status=Subscription.Status.ACTIVE).exists()
        for sub in subscriptions:
            assert token_balance(token_address, sub.payer_address, w3=w3) == payers[sub.pk] - 10**6

        # The operator hears of it once; an ordinary user never gets an operator event.
        events = WebhookEvent.objects.filter(type="relayer.unfunded")
        assert [(event.owner_id, event.data["address"]) for event in events] == [(staff.pk, dry)]
        body = client.get("/health").json()
        assert body["relayers"]["outOfPool"] == [dry]
    finally:
        _set_eth(w3, dry, 10_000 * ONE_ETH)


def test_a_relayer_refused_for_funds_mid_send_hands_the_job_to_another(
    pool: list[str], paying_subscription: Any, token_address: str, w3: Web3, engine_settings: Any
) -> None:
    """The balance was read while it was funded; the node then refuses its transaction for
    funds: the relayer is taken out at once and the job, its attempt unspent, goes to the
    other relayer."""
    dry, funded = pool
    engine_settings.RELAYER_BALANCE_CHECK_SECONDS = 3600
    for _ in pool:  # each relayer's balance read (and remembered) while funded
        relayer_module.get_relayer()
    # Enough for the balance check, not for the transaction's gas at its fee cap.
    _set_eth(w3, dry, int(Decimal("0.011") * ONE_ETH))
    engine_settings.RELAYER_MIN_BALANCE_ETH = Decimal("0.01")
    relayer_module._relayers.clear()
    subscription = paying_subscription(amount="2")
    payer_before = token_balance(token_address, subscription.payer_address, w3=w3)
    try:
        _set_eth(w3, dry, 1)  # now it cannot pay for anything
        job = payment_trigger(subscription=subscription)
        first = _process(job)
        job.refresh_from_db()
        second = first if first == "completed" else _process(job)

        job.refresh_from_db()
        assert second == "completed", job.error
        assert job.attempts_made <= 1, "the refused attempt was given back"
        payment = Payment.objects.get(pk=job.payment_id)
        assert w3.eth.get_transaction(payment.transaction_hash)["from"] == funded  # type: ignore[arg-type]
        subscription.refresh_from_db()
        assert subscription.status == Subscription.Status.ACTIVE
        assert token_balance(token_address, subscription.payer_address, w3=w3) == (
            payer_before - 2 * 10**6
        )
    finally:
        _set_eth(w3, dry, 10_000 * ONE_ETH)


def test_with_no_funded_relayer_jobs_wait_and_are_paid_once_one_is_funded(
    pool: list[str], paying_subscription: Any, token_address: str, w3: Web3
) -> None:
    for address in pool:
        _set_eth(w3, address, 0)
    subscription = paying_subscription(amount="4")
    payer_before = token_balance(token_address, subscription.payer_address, w3=w3)
    try:
        job = payment_trigger(subscription=subscription)
        outcomes = [_process(job) for _ in range(job.max_attempts + 1)]

        job.refresh_from_db()
        assert outcomes == ["delayed"] * (job.max_attempts + 1)
        assert (job.error_code, job.attempts_made) == ("relayer_unavailable", 0)
        assert "fund one" in job.error
        subscription.refresh_from_db()
        assert subscription.status == Subscription.Status.ACTIVE
        assert Payment.objects.get(pk=job.payment_id).status != Payment.Status.FAILED

        for address in pool:
            _set_eth(w3, address, 10_000 * ONE_ETH)
        relayer_module._balance_checked.clear()
        relayer_module._out_locally.clear()
        relayer_module.get_redis().delete(
            *[relayer_module._out_key("eip155:31337", address) for address in pool]
        )
        assert _process(job) == "completed"
        assert token_balance(token_address, subscription.payer_address, w3=w3) == (
            payer_before - 4 * 10**6
        )
    finally:
        for address in pool:
            _set_eth(w3, address, 10_000 * ONE_ETH)
