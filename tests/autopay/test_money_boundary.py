"""Whose money: a subscription can only ever be paid from its own owner's wallet.

User A owns a funded server-held wallet. User B (hostile, and a staff member acting for B)
tries every way of pointing a subscription at A's wallet: through the API (create by address,
create by wallet id, PATCH the address, PATCH the wallet, staff PATCH), through the admin, and
by rows written straight into the database (what older data may hold). After each attempt
B's subscriptions are triggered and their jobs processed for real on anvil, through every
settlement path the engine has (each case runs once per path); A's balance must not move, and
the engine must refuse with ``signer_unavailable`` wherever a foreign wallet reached it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client
from rest_framework.test import APIClient

from autopay import engine
from autopay.chain.client import token_balance
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions import services
from subscriptions.models import Payment, Subscription
from tests.batching import settle_as_one_batch
from tests.factories import SubscriptionFactory, UserFactory, new_address

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]

A_FUNDS = 100 * 10**6
WORKER = "hostile-test"


def _settle_one_by_one(job_ids: Sequence[str]) -> None:
    """The single path: one process message per job (a manual trigger, a retry)."""
    for job_id in job_ids:
        engine.process_job(job_id=job_id, worker_id=WORKER)


def _settle_in_one_batch(job_ids: Sequence[str]) -> None:
    """The batch path: the jobs as one settle-batch message (the scan's scheduled work)."""
    settle_as_one_batch(list(job_ids), WORKER)


# Every way a job can be settled. A new path (a merged pipeline) is one more entry here, and
# every case below then runs through it too.
SETTLEMENT_PATHS: dict[str, Callable[[Sequence[str]], None]] = {
    "single": _settle_one_by_one,
    "batch": _settle_in_one_batch,
}


@pytest.fixture(params=list(SETTLEMENT_PATHS))
def settle_jobs(request: pytest.FixtureRequest) -> Callable[[Sequence[str]], None]:
    """Settles job ids through one settlement path (each test runs once per path)."""
    return SETTLEMENT_PATHS[request.param]


@pytest.fixture
def victim_wallet(funded_wallet: Callable[..., Any], user: Any) -> Any:
    """User A's funded server-held wallet."""
    return funded_wallet(A_FUNDS, owner=user)


@pytest.fixture
def attackers_subscription(
    funded_wallet: Callable[..., Any], other_user: Any, token_address: str
) -> Subscription:
    """User B's own, legitimate subscription, paid from B's own funded wallet."""
    wallet = funded_wallet(A_FUNDS, owner=other_user)
    return SubscriptionFactory.create(
        owner=other_user,
        wallet=wallet,
        payer_address=wallet.address,
        token_address=token_address,
        amount=Decimal("7"),
    )


def _trigger_everything_of(owner: Any, settle_jobs: Callable[[Sequence[str]], None]) -> list[Job]:
    """Trigger every chargeable subscription of ``owner`` and settle the jobs on the chain."""
    jobs = []
    for subscription in Subscription.objects.filter(owner=owner).order_by("pk"):
        try:
            jobs.append(payment_trigger(subscription=subscription))
        except (services.SubscriptionStateError, services.PaymentConflict):
            continue
    if jobs:
        settle_jobs([str(job.pk) for job in jobs])
    for job in jobs:
        job.refresh_from_db()
    return jobs


def _create_payload(token_address: str, **fields: Any) -> dict[str, Any]:
    return {
        "service_name": "Hostile",
        "recipient_address": new_address(),
        "amount": "7",
        "token_address": token_address,
        "network": "eip155:31337",
        **fields,
    }


def test_create_naming_anothers_address_is_refused(
    engine_settings: Any,
    victim_wallet: Any,
    other_user: Any,
    other_api: APIClient,
    token_address: str,
    settle_jobs: Callable[[Sequence[str]], None],
) -> None:
    # By address alone (what the original defect allowed), and by address beside B's wallet.
    by_address = other_api.post(
        "/api/subscriptions/",
        _create_payload(token_address, payer_address=victim_wallet.address),
        format="json",
    )
    assert by_address.status_code == 400, by_address.content
    assert "wallet" in by_address.json()["details"]

    _trigger_everything_of(other_user, settle_jobs)
    assert Subscription.objects.filter(owner=other_user).count() == 0
    assert token_balance(token_address, victim_wallet.address) == A_FUNDS


def test_create_naming_anothers_wallet_id_is_refused(
    engine_settings: Any,
    victim_wallet: Any,
    other_user: Any,
    other_api: APIClient,
    attackers_subscription: Subscription,
    token_address: str,
    settle_jobs: Callable[[Sequence[str]], None],
) -> None:
    with_id = other_api.post(
        "/api/subscriptions/",
        _create_payload(token_address, wallet=victim_wallet.pk),
        format="json",
    )
    assert with_id.status_code == 400, with_id.content
    assert "wallet" in with_id.json()["details"]
    own_wallet_foreign_address = other_api.post(
        "/api/subscriptions/",
        _create_payload(
            token_address,
            wallet=attackers_subscription.wallet_id,
            payer_address=victim_wallet.address,
        ),
        format="json",
    )
    assert own_wallet_foreign_address.status_code == 400
    assert "payer_address" in own_wallet_foreign_address.json()["details"]

    jobs = _trigger_everything_of(other_user, settle_jobs)
    assert [job.status for job in jobs] == [Job.Status.COMPLETED]  # only B's own, from B
    assert token_balance(token_address, victim_wallet.address) == A_FUNDS


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda wallet: {"payer_address": wallet.address}, id="patch-address"),
        pytest.param(lambda wallet: {"wallet": wallet.pk}, id="patch-wallet"),
        pytest.param(
            lambda wallet: {"wallet": wallet.pk, "payer_address": wallet.address},
            id="patch-both",
        ),
    ],
)
def test_patch_cannot_move_a_subscription_onto_anothers_wallet(
    engine_settings: Any,
    victim_wallet: Any,
    other_user: Any,
    other_api: APIClient,
    attackers_subscription: Subscription,
    token_address: str,
    settle_jobs: Callable[[Sequence[str]], None],
    change: Callable[[Any], dict[str, Any]],
) -> None:
    response = other_api.patch(
        f"/api/subscriptions/{attackers_subscription.pk}", change(victim_wallet), format="json"
    )
    assert response.status_code == 400, response.content

    attackers_subscription.refresh_from_db()
    assert attackers_subscription.payer_address != victim_wallet.address
    jobs = _trigger_everything_of(other_user, settle_jobs)
    assert [job.status for job in jobs] == [Job.Status.COMPLETED]
    assert token_balance(token_address, victim_wallet.address) == A_FUNDS


def test_staff_patch_cannot_attach_one_users_wallet_to_anothers_subscription(
    engine_settings: Any,
    victim_wallet: Any,
    other_user: Any,
    staff_api: APIClient,
    attackers_subscription: Subscription,
    token_address: str,
    settle_jobs: Callable[[Sequence[str]], None],
) -> None:
    response = staff_api.patch(
        f"/api/subscriptions/{attackers_subscription.pk}",
        {"wallet": victim_wallet.pk},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "wallet" in response.json()["details"]

    _trigger_everything_of(other_user, settle_jobs)
    assert token_balance(token_address, victim_wallet.address) == A_FUNDS


def test_admin_cannot_attach_one_users_wallet_to_anothers_subscription(
    engine_settings: Any,
    victim_wallet: Any,
    other_user: Any,
    attackers_subscription: Subscription,
    token_address: str,
    settle_jobs: Callable[[Sequence[str]], None],
) -> None:
    operator = UserFactory.create(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)
    url = f"/admin/subscriptions/subscription/{attackers_subscription.pk}/change/"
    form = {
        "service_name": attackers_subscription.service_name,
        "wallet": str(victim_wallet.pk),
        "recipient_address": attackers_subscription.recipient_address,
        "amount": "7",
        "auto_pay_enabled": "on",
        "payments-TOTAL_FORMS": "0",
        "payments-INITIAL_FORMS": "0",
        "payments-MIN_NUM_FORMS": "0",
        "payments-MAX_NUM_FORMS": "0",
    }

    response = client.post(url, form)

    assert response.status_code == 200  # the form again, with its error
    assert b"The wallet belongs to another user." in response.content
    attackers_subscription.refresh_from_db()
    assert attackers_subscription.wallet_id != victim_wallet.pk
    _trigger_everything_of(other_user, settle_jobs)
    assert token_balance(token_address, victim_wallet.address) == A_FUNDS


@pytest.mark.parametrize("attach_wallet", [True, False], ids=["foreign-wallet-id", "address-only"])
def test_the_signer_refuses_a_foreign_wallet_that_reached_the_database(
    engine_settings: Any,
    victim_wallet: Any,
    other_user: Any,
    token_address: str,
    settle_jobs: Callable[[Sequence[str]], None],
    attach_wallet: bool,
) -> None:
    """Rows no validation saw (old data, a bug elsewhere): the signer is the last wall."""
    SubscriptionFactory.create(
        owner=other_user,
        wallet=victim_wallet if attach_wallet else None,
        payer_address=victim_wallet.address,
        token_address=token_address,
        amount=Decimal("7"),
    )

    jobs = _trigger_everything_of(other_user, settle_jobs)

    assert token_balance(token_address, victim_wallet.address) == A_FUNDS
    assert [(job.status, job.error_code) for job in jobs] == [
        (Job.Status.FAILED, "signer_unavailable")
    ]
    payment = Payment.objects.get(subscription__owner=other_user)
    assert payment.status == Payment.Status.FAILED
    assert payment.transaction_hash == ""


def test_a_payment_row_drawing_on_anothers_wallet_is_never_signed(
    engine_settings: Any,
    victim_wallet: Any,
    user: Any,
    other_user: Any,
    attackers_subscription: Subscription,
    token_address: str,
    settle_jobs: Callable[[Sequence[str]], None],
) -> None:
    """B's own payment rewritten in the database to draw on A's wallet, with A's address as
    the payer (what an attacker who found a gap elsewhere would leave), settled together with
    A's own payment from that wallet, A's first so that A's key is already at hand: A pays
    A's own period and nothing else; B's is never signed."""
    victims_subscription = SubscriptionFactory.create(
        owner=user,
        wallet=victim_wallet,
        payer_address=victim_wallet.address,
        token_address=token_address,
        amount=Decimal("2"),
    )
    victims_job = payment_trigger(subscription=victims_subscription)
    attackers_job = payment_trigger(subscription=attackers_subscription)
    Subscription.objects.filter(pk=attackers_subscription.pk).update(
        wallet=victim_wallet, payer_address=victim_wallet.address
    )
    Payment.objects.filter(pk=attackers_job.payment_id).update(
        wallet=victim_wallet, payer_address=victim_wallet.address
    )

    settle_jobs([str(victims_job.pk), str(attackers_job.pk)])

    # The money first: A paid A's own 2 and nothing for B.
    assert token_balance(token_address, victim_wallet.address) == A_FUNDS - 2 * 10**6
    assert token_balance(token_address, attackers_subscription.recipient_address) == 0
    victims_job.refresh_from_db()
    assert victims_job.status == Job.Status.COMPLETED, victims_job.error
    attackers_job.refresh_from_db()
    assert (attackers_job.status, attackers_job.error_code) == (
        Job.Status.FAILED,
        "signer_unavailable",
    )
    payment = Payment.objects.get(pk=attackers_job.payment_id)
    assert payment.status == Payment.Status.FAILED
    assert payment.transaction_hash == ""


def test_migration_pauses_subscriptions_paid_from_a_foreign_wallet(
    victim_wallet: Any, other_user: Any, user: Any
) -> None:
    from importlib import import_module

    migration = import_module("subscriptions.migrations.0005_payment_wallet_waived_status_reason")
    foreign = SubscriptionFactory.create(
        owner=other_user, wallet=victim_wallet, payer_address=victim_wallet.address
    )
    by_address = SubscriptionFactory.create(
        owner=other_user, wallet=None, payer_address=victim_wallet.address
    )
    own = SubscriptionFactory.create(owner=user, wallet=None, payer_address=victim_wallet.address)
    own_payment = services.payment_build(subscription=own, index=0)
    own_payment.save()

    # The models as they stood at that migration (PayerWallet still in the engine app).
    state = MigrationLoader(connection).project_state(
        ("subscriptions", "0005_payment_wallet_waived_status_reason")
    )
    migration.enforce_money_boundary(state.apps, None)

    for subscription in (foreign, by_address):
        subscription.refresh_from_db()
        assert subscription.status == Subscription.Status.PAUSED
        assert "another user" in subscription.status_reason
    own.refresh_from_db()
    assert own.status == Subscription.Status.ACTIVE
    assert own.wallet_id == victim_wallet.pk  # the owner's own wallet, found by owner
    own_payment.refresh_from_db()
    assert own_payment.wallet_id == victim_wallet.pk
    # Resuming needs one of the owner's own wallets.
    with pytest.raises(services.SubscriptionStateError):
        services.subscription_resume(subscription=foreign)
