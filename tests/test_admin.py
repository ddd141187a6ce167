"""Operator admin: changelists with search and filters, actions, access, and no key material."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions import services
from subscriptions.custody import encrypt_private_key
from subscriptions.models import Payment, Subscription
from tests.factories import PayerWalletFactory, SubscriptionFactory, UserFactory, new_address

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client: Client, staff_user: Any) -> Client:
    client.force_login(staff_user)
    return client


def failed_job(subscription: Subscription) -> Job:
    job = payment_trigger(subscription=subscription)
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.FAILED, error_code="rpc_timeout", error="RPC timed out"
    )
    Payment.objects.filter(pk=job.payment_id).update(
        status=Payment.Status.FAILED, error_code="rpc_timeout", error_message="RPC timed out"
    )
    job.refresh_from_db()
    return job


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


# --- changelists, search, filters --------------------------------------------------------------


def test_subscription_changelist_search_and_filters(operator: Client) -> None:
    netflix = SubscriptionFactory.create(service_name="Netflix Premium")
    spotify = SubscriptionFactory.create(
        service_name="Spotify Duo", status=Subscription.Status.PAUSED
    )
    url = "/admin/subscriptions/subscription/"

    everything = page(operator, url)
    assert "Netflix Premium" in everything
    assert "Spotify Duo" in everything

    searched = page(operator, f"{url}?q=Netflix")
    assert "Netflix Premium" in searched
    assert "Spotify Duo" not in searched
    by_address = page(operator, f"{url}?q={spotify.payer_address}")
    assert "Spotify Duo" in by_address
    assert "Netflix Premium" not in by_address
    by_id = page(operator, f"{url}?q={netflix.pk}")
    assert "Netflix Premium" in by_id

    paused = page(operator, f"{url}?status__exact=paused")
    assert "Spotify Duo" in paused
    assert "Netflix Premium" not in paused
    page(operator, f"{url}?auto_pay_enabled__exact=1&interval_unit__exact=month")
    page(operator, f"{url}?network__exact=eip155%3A31337")
    page(operator, f"{url}?o=3")


def test_payment_changelist_search_and_filters(operator: Client) -> None:
    paid = services.payment_build(
        subscription=SubscriptionFactory.create(service_name="Paid"), index=0
    )
    paid.status = Payment.Status.COMPLETED
    paid.transaction_hash = "0x" + "ab" * 32
    paid.save()
    failed = failed_job(SubscriptionFactory.create(service_name="Failing")).payment
    url = "/admin/subscriptions/payment/"

    everything = page(operator, url)
    assert f"/admin/subscriptions/payment/{paid.pk}/change/" in everything
    assert f"/admin/subscriptions/payment/{failed.pk}/change/" in everything
    by_hash = page(operator, f"{url}?q={paid.transaction_hash}")
    assert f"/admin/subscriptions/payment/{paid.pk}/change/" in by_hash
    assert f"/admin/subscriptions/payment/{failed.pk}/change/" not in by_hash
    only_failed = page(operator, f"{url}?status__exact=failed")
    assert f"/admin/subscriptions/payment/{failed.pk}/change/" in only_failed
    assert f"/admin/subscriptions/payment/{paid.pk}/change/" not in only_failed
    by_code = page(operator, f"{url}?error_code=rpc_timeout")
    assert f"/admin/subscriptions/payment/{failed.pk}/change/" in by_code
    page(operator, f"{url}?q=not-a-number")
    page(operator, f"/admin/subscriptions/payment/{paid.pk}/change/")


def test_job_changelist_search_and_filters(operator: Client) -> None:
    failed = failed_job(SubscriptionFactory.create())
    waiting = payment_trigger(subscription=SubscriptionFactory.create())
    url = "/admin/jobs/job/"

    everything = page(operator, url)
    assert str(failed.pk) in everything
    assert str(waiting.pk) in everything

    only_failed = page(operator, f"{url}?status__exact=failed")
    assert str(failed.pk) in only_failed
    assert str(waiting.pk) not in only_failed
    by_source = page(operator, f"{url}?source__exact=manual&error_code=rpc_timeout")
    assert str(failed.pk) in by_source
    assert str(waiting.pk) not in by_source

    by_id = page(operator, f"{url}?q={waiting.pk}")
    assert str(waiting.pk) in by_id
    assert str(failed.pk) not in by_id
    by_error = page(operator, f"{url}?q=timed+out")
    assert str(failed.pk) in by_error
    assert str(waiting.pk) not in by_error
    # Free text that is not a UUID or an integer must not break the id lookups.
    page(operator, f"{url}?q=hello")
    page(operator, f"/admin/jobs/job/{failed.pk}/change/")


def test_wallet_changelist_search(operator: Client) -> None:
    mine = PayerWalletFactory.create(label="treasury")
    other = PayerWalletFactory.create(label="petty cash")
    url = "/admin/subscriptions/payerwallet/"

    searched = page(operator, f"{url}?q=treasury")
    assert mine.address in searched
    assert other.address not in searched
    assert other.address in page(operator, f"{url}?q={other.address}")


def test_subscription_change_page_renders_with_payments(operator: Client) -> None:
    job = payment_trigger(subscription=SubscriptionFactory.create(service_name="Inline"))
    content = page(operator, f"/admin/subscriptions/subscription/{job.subscription_id}/change/")
    assert "Inline" in content
    assert "pending" in content.lower()


# --- actions -----------------------------------------------------------------------------------


def test_retry_selected_creates_a_new_waiting_job_on_the_same_payment(operator: Client) -> None:
    failed = failed_job(SubscriptionFactory.create())

    response = operator.post(
        "/admin/jobs/job/",
        {"action": "retry_selected", "_selected_action": [str(failed.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    assert "1 job(s) queued for retry" in response.content.decode()
    new_job = Job.objects.exclude(pk=failed.pk).get()
    assert new_job.payment_id == failed.payment_id
    assert new_job.status == Job.Status.WAITING
    assert new_job.source == Job.Source.RETRY
    failed.refresh_from_db()
    assert failed.status == Job.Status.FAILED
    payment = Payment.objects.get(pk=failed.payment_id)
    assert payment.status == Payment.Status.PENDING
    assert payment.error_code == ""


def test_retry_selected_skips_jobs_that_are_not_failed(operator: Client) -> None:
    waiting = payment_trigger(subscription=SubscriptionFactory.create())

    response = operator.post(
        "/admin/jobs/job/",
        {"action": "retry_selected", "_selected_action": [str(waiting.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    assert "0 job(s) queued for retry" in response.content.decode()
    assert Job.objects.count() == 1


def test_pause_and_resume_selected(operator: Client) -> None:
    first = SubscriptionFactory.create()
    second = SubscriptionFactory.create()
    canceled = services.subscription_cancel(subscription=SubscriptionFactory.create())
    selected = [str(first.pk), str(second.pk), str(canceled.pk)]
    url = "/admin/subscriptions/subscription/"

    paused = operator.post(
        url, {"action": "pause_selected", "_selected_action": selected}, follow=True
    )
    assert paused.status_code == 200
    assert "2 subscription(s) paused" in paused.content.decode()
    statuses = dict(Subscription.objects.values_list("pk", "status"))
    assert statuses == {first.pk: "paused", second.pk: "paused", canceled.pk: "canceled"}

    resumed = operator.post(
        url, {"action": "resume_selected", "_selected_action": selected}, follow=True
    )
    assert resumed.status_code == 200
    assert "2 subscription(s) resumed" in resumed.content.decode()
    statuses = dict(Subscription.objects.values_list("pk", "status"))
    assert statuses == {first.pk: "active", second.pk: "active", canceled.pk: "canceled"}


def test_cancel_selected_goes_through_the_service(operator: Client) -> None:
    subscription = SubscriptionFactory.create()

    response = operator.post(
        "/admin/subscriptions/subscription/",
        {"action": "cancel_selected", "_selected_action": [str(subscription.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    assert "1 subscription(s) canceled" in response.content.decode()
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.CANCELED
    assert subscription.auto_pay_enabled is False
    assert subscription.canceled_at is not None


# --- access ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/subscriptions/subscription/",
        "/admin/jobs/job/",
        "/admin/subscriptions/payerwallet/",
    ],
)
def test_non_staff_and_anonymous_are_sent_to_login(client: Client, user: Any, url: str) -> None:
    anonymous = client.get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")

    client.force_login(user)
    logged_in = client.get(url)
    assert logged_in.status_code == 302
    assert logged_in["Location"].startswith("/admin/login/")


def test_non_staff_cannot_run_actions(client: Client, user: Any) -> None:
    subscription = SubscriptionFactory.create()
    client.force_login(user)
    client.post(
        "/admin/subscriptions/subscription/",
        {"action": "pause_selected", "_selected_action": [str(subscription.pk)]},
    )
    assert Subscription.objects.get(pk=subscription.pk).status == Subscription.Status.ACTIVE


# --- no key material in wallet pages -----------------------------------------------------------


def test_wallet_pages_never_show_key_material(operator: Client) -> None:
    from eth_account import Account

    account = Account.create()
    wallet = PayerWalletFactory.create(
        owner=UserFactory.create(),
        address=account.address,
        encrypted_private_key=encrypt_private_key(bytes(account.key)),
        label="hot wallet",
    )
    private_hex = bytes(account.key).hex()
    forbidden = [wallet.encrypted_private_key, private_hex, "encrypted_private_key"]

    for url in (
        "/admin/subscriptions/payerwallet/",
        f"/admin/subscriptions/payerwallet/{wallet.pk}/change/",
        f"/admin/subscriptions/payerwallet/{wallet.pk}/history/",
        f"/admin/subscriptions/payerwallet/?q={wallet.address}",
    ):
        content = page(operator, url)
        assert wallet.address in content
        for secret in forbidden:
            assert secret not in content, url
            assert secret.lower() not in content.lower(), url


def test_wallet_change_form_cannot_replace_the_address_or_key(operator: Client) -> None:
    wallet = PayerWalletFactory.create(label="before")
    original = (wallet.address, wallet.encrypted_private_key)

    response = operator.post(
        f"/admin/subscriptions/payerwallet/{wallet.pk}/change/",
        {
            "label": "after",
            "address": new_address(),
            "encrypted_private_key": "attacker",
            "owner": str(wallet.owner_id),
        },
    )

    assert response.status_code == 302
    wallet.refresh_from_db()
    assert wallet.label == "after"
    assert (wallet.address, wallet.encrypted_private_key) == original


def test_wallets_cannot_be_added_by_hand(operator: Client) -> None:
    assert operator.get("/admin/subscriptions/payerwallet/add/").status_code == 403


def test_wallets_and_jobs_cannot_be_deleted(operator: Client) -> None:
    wallet = PayerWalletFactory.create()
    job = failed_job(SubscriptionFactory.create())

    assert operator.get(f"/admin/subscriptions/payerwallet/{wallet.pk}/delete/").status_code == 403
    assert operator.get(f"/admin/jobs/job/{job.pk}/delete/").status_code == 403
    bulk = operator.post(
        "/admin/jobs/job/",
        {"action": "delete_selected", "_selected_action": [str(job.pk)], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    assert Job.objects.filter(pk=job.pk).exists()
    assert type(wallet).objects.filter(pk=wallet.pk).exists()


# --- the admin validates like the API ----------------------------------------------------------


def test_admin_change_refuses_a_non_checksummed_address(operator: Client) -> None:
    subscription = SubscriptionFactory.create(amount=Decimal("10"))
    url = f"/admin/subscriptions/subscription/{subscription.pk}/change/"
    form = admin_form_data(subscription, recipient_address=new_address().lower())

    response = operator.post(url, form)

    assert response.status_code == 200
    assert "checksum" in response.content.decode()
    assert Subscription.objects.get(pk=subscription.pk).recipient_address == (
        subscription.recipient_address
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount", "0.0000001", "decimal places"),
        ("amount", "0", "greater than zero"),
        ("amount", "-3", "greater than"),
        ("recipient_address", "0x" + "0" * 40, "zero address"),
        ("wallet", "", "Attach one of the owner"),
    ],
)
def test_admin_change_validates_like_the_api(
    operator: Client, field: str, value: str, message: str
) -> None:
    subscription = SubscriptionFactory.create()
    before = Subscription.objects.values().get(pk=subscription.pk)

    response = operator.post(
        f"/admin/subscriptions/subscription/{subscription.pk}/change/",
        admin_form_data(subscription, **{field: value}),
    )

    assert response.status_code == 200
    assert message in response.content.decode()
    assert Subscription.objects.values().get(pk=subscription.pk) == before


def test_admin_change_with_valid_data_saves(operator: Client) -> None:
    subscription = SubscriptionFactory.create()
    recipient = new_address()

    response = operator.post(
        f"/admin/subscriptions/subscription/{subscription.pk}/change/",
        admin_form_data(subscription, recipient_address=recipient, amount="12.5"),
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    subscription.refresh_from_db()
    assert subscription.recipient_address == recipient
    assert subscription.amount == Decimal("12.5")


def test_admin_change_cannot_move_the_schedule_or_the_status(operator: Client) -> None:
    subscription = SubscriptionFactory.create()
    before = Subscription.objects.values().get(pk=subscription.pk)

    response = operator.post(
        f"/admin/subscriptions/subscription/{subscription.pk}/change/",
        admin_form_data(
            subscription,
            billing_anchor_0="2020-01-01",
            interval_unit="day",
            interval_count="7",
            network="eip155:8453",
            token_address=new_address(),
            status="canceled",
        ),
    )

    assert response.status_code == 302
    after = Subscription.objects.values().get(pk=subscription.pk)
    for field in (
        "billing_anchor",
        "interval_unit",
        "interval_count",
        "network",
        "token_address",
        "status",
        "next_period_due_at",
    ):
        assert after[field] == before[field], field


def test_admin_refuses_another_owners_wallet(operator: Client) -> None:
    subscription = SubscriptionFactory.create()
    stranger_wallet = PayerWalletFactory.create()

    response = operator.post(
        f"/admin/subscriptions/subscription/{subscription.pk}/change/",
        admin_form_data(subscription, wallet=str(stranger_wallet.pk)),
    )

    assert response.status_code == 200
    assert "belongs to another user" in response.content.decode()
    assert Subscription.objects.get(pk=subscription.pk).wallet_id is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("network", "solana:abc", "CAIP-2"),
        ("network", "eip155:999999", "not supported"),
        ("token_address", "0x" + "ab" * 20, "checksum"),
        ("amount", "1.0000001", "decimal places"),
    ],
)
def test_admin_add_validates_like_the_api(
    operator: Client, staff_user: Any, field: str, value: str, message: str
) -> None:
    form = admin_form_data(None, owner=str(staff_user.pk), **{field: value})

    response = operator.post("/admin/subscriptions/subscription/add/", form)

    assert response.status_code == 200
    assert message in response.content.decode()
    assert Subscription.objects.count() == 0


def test_admin_can_add_a_subscription(operator: Client, staff_user: Any) -> None:
    form = admin_form_data(None, owner=str(staff_user.pk), status="paused")

    response = operator.post("/admin/subscriptions/subscription/add/", form)

    assert response.status_code == 302, response.content.decode()[:3000]
    subscription = Subscription.objects.get()
    # Status is never typed in: a new subscription starts active; the actions change it.
    assert subscription.status == Subscription.Status.ACTIVE
    assert subscription.next_payment_due_at == subscription.billing_anchor
    assert subscription.next_period_due_at == subscription.billing_anchor
    assert subscription.next_period_index == 0


def admin_form_data(subscription: Subscription | None, **overrides: Any) -> dict[str, Any]:
    """The subscription change form as a browser would post it, paid from a wallet of the
    subscription's owner (the ``owner`` override's for a new one)."""
    anchor = subscription.billing_anchor if subscription else None
    owner_id = subscription.owner_id if subscription else overrides.get("owner")
    wallet = (subscription.wallet if subscription else None) or PayerWalletFactory.create(
        owner_id=owner_id
    )
    data: dict[str, Any] = {
        "owner": str(subscription.owner_id) if subscription else "",
        "service_name": subscription.service_name if subscription else "Admin made",
        "recipient_address": subscription.recipient_address if subscription else new_address(),
        "wallet": str(wallet.pk),
        "amount": str(subscription.amount) if subscription else "5",
        "token_address": subscription.token_address if subscription else settings.TOKEN_ADDRESS,
        "token_decimals": "6",
        "network": subscription.network if subscription else "eip155:31337",
        "interval_unit": subscription.interval_unit if subscription else "month",
        "interval_count": "1",
        "billing_anchor_0": anchor.strftime("%Y-%m-%d") if anchor else "2025-01-31",
        "billing_anchor_1": anchor.strftime("%H:%M:%S") if anchor else "10:00:00",
        "auto_pay_enabled": "on",
        "status": subscription.status if subscription else "active",
        "payments-TOTAL_FORMS": "0",
        "payments-INITIAL_FORMS": "0",
        "payments-MIN_NUM_FORMS": "0",
        "payments-MAX_NUM_FORMS": "0",
    }
    data.update(overrides)
    return data
