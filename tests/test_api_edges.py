"""The API's edges as an integrator meets them: a root listing every resource, one 404 text,
errors on the field that caused them, refusals that say why, filters that list their values.
Real PostgreSQL and Redis; no chain."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.models import Job
from subscriptions import services
from subscriptions.models import Payment, Subscription
from tests.factories import PayerWalletFactory, SubscriptionFactory, new_address

pytestmark = pytest.mark.django_db

NETWORK = "eip155:31337"


def error(response: Any, http_status: int) -> dict[str, Any]:
    assert response.status_code == http_status, response.content
    body = response.json()
    assert body["success"] is False
    return body


def payload(wallet: Any, **overrides: Any) -> dict[str, Any]:
    return {
        "service_name": "Pro plan",
        "wallet": wallet.pk,
        "recipient_address": new_address(),
        "amount": "9.99",
        "network": NETWORK,
        **overrides,
    }


def test_the_api_root_lists_every_resource(api: APIClient) -> None:
    response = api.get("/api/")

    assert response.status_code == 200, response.content
    links = response.json()
    for name in (
        "subscriptions",
        "payments",
        "wallets",
        "jobs",
        "jobs/stats",
        "webhook-endpoints",
        "analytics",
        "auth/tokens",
        "docs",
        "schema",
        "health/live",
        "health/ready",
    ):
        assert name in links, (name, links)
    assert links["subscriptions"].endswith("/api/subscriptions")
    assert links["auth/tokens"].endswith("/api/auth/tokens")
    # Every link answers (no dead entry in the root).
    for name, url in links.items():
        assert api.get(url).status_code == 200, (name, url)


def test_every_route_answers_one_404_format(api: APIClient, other_user: Any) -> None:
    theirs = SubscriptionFactory.create(owner=other_user)
    wallet = PayerWalletFactory.create(owner=other_user)
    expected = {
        f"/api/subscriptions/{theirs.pk}/": "Subscription not found.",
        f"/api/subscriptions/{theirs.pk}/authorizations": "Subscription not found.",
        f"/api/jobs/subscription/{theirs.pk}": "Subscription not found.",
        "/api/jobs/9d1c1a34-0b8e-4f3a-9a0e-2f1c4b5a6d7e": "Job not found.",
        "/api/payments/987654/": "Payment not found.",
        f"/api/wallets/{wallet.pk}/": "Wallet not found.",
        f"/api/wallets/{wallet.pk}/balance": "Wallet not found.",
        "/api/webhook-endpoints/987654/": "Webhook endpoint not found.",
        "/api/auth/tokens/abcdef0123456789": "Token not found.",
    }
    for path, message in expected.items():
        method = api.delete if "auth/tokens" in path else api.get
        assert error(method(path), 404)["error"] == message, path
    trigger = api.post(f"/api/subscriptions/{theirs.pk}/trigger-payment")
    assert error(trigger, 404)["error"] == "Subscription not found."


def test_triggering_a_canceled_subscription_says_it_is_canceled(api: APIClient, user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user, token_address=new_address())
    services.subscription_cancel(subscription=subscription)

    body = error(api.post(f"/api/subscriptions/{subscription.pk}/trigger-payment"), 400)

    assert body["error"] == "Subscription is canceled; it cannot be charged."
    assert not Job.objects.exists()
    assert not Payment.objects.exists()


def test_triggering_with_auto_pay_off_says_so(api: APIClient, user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user, auto_pay_enabled=False)

    body = error(api.post(f"/api/subscriptions/{subscription.pk}/trigger-payment"), 400)

    assert body["error"] == "Auto-pay is not enabled for this subscription."


@pytest.mark.parametrize("whose", ["foreign", "unknown"])
def test_a_foreign_or_unknown_wallet_is_a_clear_message_on_the_wallet_field(
    api: APIClient, user: Any, other_user: Any, settings: Any, whose: str
) -> None:
    settings.CHAIN_NETWORK = NETWORK
    PayerWalletFactory.create(owner=user)
    foreign = PayerWalletFactory.create(owner=other_user)
    wallet_id = foreign.pk if whose == "foreign" else foreign.pk + 1000
    data = {**payload(foreign), "wallet": wallet_id}

    body = error(api.post("/api/subscriptions/", data, format="json"), 400)

    message = body["details"]["wallet"][0]
    assert message == (
        f"Wallet {wallet_id} not found: give the id of one of your wallets (GET /api/wallets/)."
    )
    assert "Invalid pk" not in body["error"]
    assert not Subscription.objects.exists()


def test_a_network_without_a_token_is_reported_on_the_network_field(
    api: APIClient, user: Any, settings: Any
) -> None:
    settings.CHAIN_NETWORK = NETWORK
    wallet = PayerWalletFactory.create(owner=user)
    # Supported by default (Ethereum mainnet), but this deployment has no token there.
    data = payload(wallet, network="eip155:1")

    body = error(api.post("/api/subscriptions/", data, format="json"), 400)

    assert set(body["details"]) == {"network"}, body
    assert body["details"]["network"][0] == (
        f"Network eip155:1 has no token configured here; configured networks: {NETWORK}."
    )
    assert not Subscription.objects.exists()


@pytest.mark.parametrize(
    ("path", "parameter", "values"),
    [
        ("/api/jobs/", "source", [choice for choice, _ in Job.Source.choices]),
        ("/api/jobs/", "status", [choice for choice, _ in Job.Status.choices]),
        ("/api/payments/", "status", [choice for choice, _ in Payment.Status.choices]),
        ("/api/subscriptions/", "status", [c for c, _ in Subscription.Status.choices]),
        ("/api/subscriptions/", "mode", [c for c, _ in Subscription.Mode.choices]),
        ("/api/subscriptions/", "interval_unit", [c for c, _ in Subscription.IntervalUnit.choices]),
    ],
)
def test_an_unknown_choice_filter_value_lists_the_valid_ones(
    api: APIClient, path: str, parameter: str, values: list[str]
) -> None:
    body = error(api.get(path, {parameter: "bogus"}), 400)

    message = body["details"][parameter][0]
    assert message == f"bogus is not one of the valid values: {', '.join(values)}."
    assert body["error"] == f"{parameter}: {message}"
    assert api.get(path, {parameter: values[0]}).status_code == 200
