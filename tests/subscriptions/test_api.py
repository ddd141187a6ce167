"""Subscription and payment API: ownership, input validation, lifecycle, manual trigger."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions import services
from subscriptions.models import Payment, Subscription
from tests.factories import PayerWalletFactory, SubscriptionFactory, new_address

pytestmark = pytest.mark.django_db

NETWORK = "eip155:31337"


# The requesting user's wallet, made per test by _own_wallet (valid_payload is a plain function
# so that parametrized cases can build payloads).
_WALLET: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _own_wallet(user: Any, settings: Any) -> Any:
    settings.CHAIN_NETWORK = NETWORK
    wallet = PayerWalletFactory.create(owner=user)
    _WALLET["current"] = wallet
    yield wallet
    _WALLET.clear()


def valid_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "service_name": "Streaming Plus",
        "wallet": _WALLET["current"].pk,
        "recipient_address": new_address(),
        "amount": "10.5",
        "token_address": settings.TOKEN_ADDRESS,
        "network": NETWORK,
        "interval_unit": "month",
        "interval_count": 1,
    }
    payload.update(overrides)
    return {key: value for key, value in payload.items() if value is not _MISSING}


_MISSING = object()


def assert_error(response: Any, http_status: int) -> dict[str, Any]:
    assert response.status_code == http_status, response.content
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["error"], str)
    assert body["error"].strip()
    return body


def wrong_checksum(address: str) -> str:
    """The address with the case of its first letter flipped: valid hex, invalid EIP-55."""
    for position, char in enumerate(address[2:], start=2):
        if char.isalpha():
            flipped = char.lower() if char.isupper() else char.upper()
            return address[:position] + flipped + address[position + 1 :]
    raise AssertionError("address has no letters")  # pragma: no cover - astronomically rare


def payment_for(subscription: Subscription, index: int = 0, **fields: Any) -> Payment:
    payment = services.payment_build(subscription=subscription, index=index)
    for name, value in fields.items():
        setattr(payment, name, value)
    payment.save()
    return payment


# --- permission boundaries -------------------------------------------------------------------


@pytest.fixture
def theirs(other_user: Any) -> Subscription:
    return SubscriptionFactory.create(owner=other_user, service_name="Their Service")


@pytest.fixture
def mine(user: Any) -> Subscription:
    return SubscriptionFactory.create(owner=user, service_name="My Service")


def test_list_shows_only_own_subscriptions(api: APIClient, mine: Any, theirs: Any) -> None:
    response = api.get("/api/subscriptions/")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    assert [row["id"] for row in body["results"]] == [mine.pk]


def test_staff_list_shows_everyone(staff_api: APIClient, mine: Any, theirs: Any) -> None:
    body = staff_api.get("/api/subscriptions/").json()
    assert {row["id"] for row in body["results"]} == {mine.pk, theirs.pk}
    assert staff_api.get(f"/api/subscriptions/{theirs.pk}").status_code == 200


def test_other_users_subscription_is_not_found(api: APIClient, theirs: Any) -> None:
    assert_error(api.get(f"/api/subscriptions/{theirs.pk}"), 404)
    assert_error(api.get(f"/api/subscriptions/{theirs.pk}/"), 404)


@pytest.mark.parametrize(
    ("method", "suffix", "data"),
    [
        ("patch", "", {"amount": "99"}),
        ("put", "", {"amount": "99"}),
        ("post", "/pause", None),
        ("post", "/resume", None),
        ("post", "/cancel", None),
        ("post", "/trigger-payment", None),
    ],
)
def test_other_users_subscription_cannot_be_changed(
    api: APIClient, theirs: Subscription, method: str, suffix: str, data: Any
) -> None:
    before = Subscription.objects.values().get(pk=theirs.pk)

    response = getattr(api, method)(f"/api/subscriptions/{theirs.pk}{suffix}", data, format="json")

    assert_error(response, 404)
    assert Subscription.objects.values().get(pk=theirs.pk) == before
    assert Payment.objects.count() == 0
    assert Job.objects.count() == 0


def test_other_users_payments_are_invisible(api: APIClient, mine: Any, theirs: Any) -> None:
    own_payment = payment_for(mine)
    their_payment = payment_for(theirs)

    listed = api.get("/api/payments/").json()
    assert [row["id"] for row in listed["results"]] == [own_payment.pk]
    filtered = api.get(f"/api/payments/?subscription={theirs.pk}")
    assert filtered.status_code == 200
    assert filtered.json()["results"] == []
    # Another user's id answers exactly like an id that does not exist (no existence oracle).
    missing = api.get(f"/api/payments/?subscription={theirs.pk + 1000}")
    assert (missing.status_code, missing.json()) == (200, filtered.json())
    own = api.get(f"/api/payments/?subscription={mine.pk}&status=pending").json()
    assert [row["id"] for row in own["results"]] == [own_payment.pk]
    assert api.get("/api/payments/?status=completed").json()["results"] == []
    assert_error(api.get(f"/api/payments/{their_payment.pk}"), 404)
    assert api.get(f"/api/payments/{own_payment.pk}").status_code == 200


def test_other_users_wallets_are_invisible(api: APIClient, user: Any, other_user: Any) -> None:
    own = PayerWalletFactory.create(owner=user)
    theirs = PayerWalletFactory.create(owner=other_user)

    listed = api.get("/api/wallets/").json()
    assert {row["id"] for row in listed["results"]} == {own.pk, _WALLET["current"].pk}
    assert_error(api.get(f"/api/wallets/{theirs.pk}"), 404)
    assert_error(api.get(f"/api/wallets/{theirs.pk}/balance"), 404)


def test_staff_sees_all_payments_and_wallets(
    staff_api: APIClient, mine: Any, theirs: Any, other_user: Any
) -> None:
    payment_for(mine)
    their_payment = payment_for(theirs)
    wallet = PayerWalletFactory.create(owner=other_user)
    assert staff_api.get("/api/payments/").json()["count"] == 2
    assert staff_api.get(f"/api/payments/{their_payment.pk}").status_code == 200
    assert staff_api.get(f"/api/wallets/{wallet.pk}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/subscriptions/"),
        ("post", "/api/subscriptions/"),
        ("get", "/api/subscriptions/{id}"),
        ("patch", "/api/subscriptions/{id}"),
        ("post", "/api/subscriptions/{id}/pause"),
        ("post", "/api/subscriptions/{id}/trigger-payment"),
        ("get", "/api/payments/"),
        ("get", "/api/wallets/"),
        ("post", "/api/wallets/"),
        ("get", "/api/jobs/"),
        ("get", "/api/jobs/stats"),
        ("get", "/api/jobs/subscription/{id}"),
    ],
)
def test_anonymous_requests_are_refused(
    anonymous_api: APIClient, mine: Subscription, method: str, path: str
) -> None:
    response = getattr(anonymous_api, method)(path.format(id=mine.pk), {}, format="json")
    assert_error(response, 401)
    assert Job.objects.count() == 0
    assert Subscription.objects.get(pk=mine.pk).status == Subscription.Status.ACTIVE


def test_a_wrong_token_is_refused(mine: Subscription) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_error(client.get("/api/subscriptions/"), 401)


# --- create and bad input --------------------------------------------------------------------


def test_create_answers_201_with_exact_amount_and_due_time(api: APIClient, user: Any) -> None:
    payload = valid_payload(amount="10.5")
    before = timezone.now()

    response = api.post("/api/subscriptions/", payload, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["amount"] == "10.5"
    assert body["status"] == "active"
    assert body["auto_pay_enabled"] is True
    assert body["payer_address"] == _WALLET["current"].address
    assert body["wallet"] == _WALLET["current"].pk
    assert body["network"] == NETWORK
    due = parse_datetime(body["next_payment_due_at"])
    assert due is not None
    assert before - timedelta(seconds=1) <= due <= timezone.now() + timedelta(seconds=1)
    stored = Subscription.objects.get(pk=body["id"])
    assert stored.owner == user
    assert stored.amount == Decimal("10.5")
    assert stored.next_period_due_at == stored.billing_anchor == due
    assert stored.token_decimals == settings.TOKEN_DECIMALS


@pytest.mark.parametrize(
    ("sent", "answered"),
    [("10.50", "10.5"), ("0.000001", "0.000001"), ("100", "100"), (7, "7"), (10.25, "10.25")],
)
def test_amounts_are_answered_as_exact_decimal_strings(
    api: APIClient, sent: Any, answered: str
) -> None:
    response = api.post("/api/subscriptions/", valid_payload(amount=sent), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["amount"] == answered
    assert Subscription.objects.get().amount == Decimal(answered)


def test_create_with_an_anchor_in_the_past_is_due_at_the_anchor(api: APIClient) -> None:
    anchor = (timezone.now() - timedelta(days=20)).replace(microsecond=0).isoformat()
    response = api.post("/api/subscriptions/", valid_payload(billing_anchor=anchor), format="json")
    assert response.status_code == 201, response.content
    assert parse_datetime(response.json()["next_payment_due_at"]) == parse_datetime(anchor)


@pytest.mark.parametrize(
    ("anchor", "unit"),
    [
        pytest.param(timedelta(days=-32), "month", id="more-than-a-month-back"),
        pytest.param(timedelta(days=-8), "week", id="more-than-a-week-back"),
        pytest.param(timedelta(hours=-2), "hour", id="more-than-an-hour-back"),
        pytest.param(timedelta(days=367), "month", id="more-than-a-year-ahead"),
    ],
)
def test_billing_anchor_is_bounded(api: APIClient, anchor: timedelta, unit: str) -> None:
    payload = valid_payload(
        billing_anchor=(timezone.now() + anchor).isoformat(), interval_unit=unit
    )
    body = assert_error(api.post("/api/subscriptions/", payload, format="json"), 400)
    assert "billing_anchor" in body["details"]
    assert Subscription.objects.count() == 0


def test_create_with_own_wallet_uses_its_address(api: APIClient, user: Any) -> None:
    wallet = PayerWalletFactory.create(owner=user)
    payload = valid_payload(wallet=wallet.pk, payer_address=_MISSING)

    response = api.post("/api/subscriptions/", payload, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["payer_address"] == wallet.address
    assert response.json()["wallet"] == wallet.pk


def _address_cases(field: str) -> list[Any]:
    address = new_address()
    return [
        pytest.param({field: "0x123"}, field, id=f"{field}-short"),
        pytest.param({field: "not-an-address"}, field, id=f"{field}-text"),
        pytest.param({field: "0x" + "g" * 40}, field, id=f"{field}-non-hex"),
        pytest.param({field: address[2:]}, field, id=f"{field}-no-0x"),
        pytest.param({field: address + "00"}, field, id=f"{field}-too-long"),
        pytest.param({field: address.lower()}, field, id=f"{field}-lowercase"),
        pytest.param({field: "0x" + address[2:].upper()}, field, id=f"{field}-uppercase"),
        pytest.param({field: wrong_checksum(address)}, field, id=f"{field}-bad-checksum"),
        pytest.param({field: 12345}, field, id=f"{field}-number"),
        pytest.param({field: ""}, field, id=f"{field}-blank"),
        pytest.param({field: None}, field, id=f"{field}-null"),
    ]


BAD_INPUT = [
    *_address_cases("payer_address"),
    *_address_cases("recipient_address"),
    *_address_cases("token_address"),
    pytest.param({"amount": "-1"}, "amount", id="amount-negative"),
    pytest.param({"amount": -5}, "amount", id="amount-negative-number"),
    pytest.param({"amount": "0"}, "amount", id="amount-zero"),
    pytest.param({"amount": "0.000000"}, "amount", id="amount-zero-decimals"),
    pytest.param({"amount": "0.0000001"}, "amount", id="amount-7-decimals"),
    pytest.param({"amount": "10.1234567"}, "amount", id="amount-over-precise"),
    pytest.param({"amount": "abc"}, "amount", id="amount-text"),
    pytest.param({"amount": ""}, "amount", id="amount-blank"),
    pytest.param({"amount": None}, "amount", id="amount-null"),
    pytest.param({"amount": "NaN"}, "amount", id="amount-nan"),
    pytest.param({"amount": "Infinity"}, "amount", id="amount-infinity"),
    pytest.param({"amount": "1e40"}, "amount", id="amount-huge"),
    pytest.param({"amount": True}, "amount", id="amount-boolean"),
    pytest.param({"amount": [1]}, "amount", id="amount-list"),
    pytest.param({"network": "eip155:999999"}, "network", id="network-unsupported"),
    pytest.param({"network": "solana:abc"}, "network", id="network-solana"),
    pytest.param({"network": "eip155:0"}, "network", id="network-zero"),
    pytest.param({"network": "8453"}, "network", id="network-bare-number"),
    pytest.param({"network": ""}, "network", id="network-blank"),
    pytest.param({"interval_unit": "fortnight"}, "interval_unit", id="unit-unknown"),
    pytest.param({"interval_unit": "MONTH"}, "interval_unit", id="unit-uppercase"),
    pytest.param({"interval_count": 0}, "interval_count", id="count-zero"),
    pytest.param({"interval_count": -1}, "interval_count", id="count-negative"),
    pytest.param({"interval_count": "x"}, "interval_count", id="count-text"),
    pytest.param({"billing_anchor": "yesterday"}, "billing_anchor", id="anchor-text"),
    pytest.param({"service_name": ""}, "service_name", id="service-blank"),
    pytest.param({"service_name": "x" * 201}, "service_name", id="service-too-long"),
    pytest.param({"service_name": _MISSING}, "service_name", id="missing-service_name"),
    pytest.param({"recipient_address": _MISSING}, "recipient_address", id="missing-recipient"),
    pytest.param({"amount": _MISSING}, "amount", id="missing-amount"),
    pytest.param({"wallet": _MISSING}, "wallet", id="missing-wallet"),
    pytest.param({"wallet": None}, "wallet", id="wallet-null"),
    pytest.param({"payer_address": new_address()}, "payer_address", id="payer-not-the-wallet"),
    pytest.param({"token_address": new_address()}, "token_address", id="token-not-allowed"),
    pytest.param({"recipient_address": "0x" + "0" * 40}, "recipient_address", id="recipient-zero"),
    pytest.param(
        {"recipient_address": lambda wallet: wallet.address},
        "recipient_address",
        id="recipient-is-the-payer",
    ),
    pytest.param(
        {"recipient_address": lambda wallet: settings.TOKEN_ADDRESS},
        "recipient_address",
        id="recipient-is-the-token",
    ),
    pytest.param({"amount": "10000.000001"}, "amount", id="amount-over-the-limit"),
    pytest.param({"wallet": 987654321}, "wallet", id="wallet-unknown"),
    pytest.param({"wallet": "abc"}, "wallet", id="wallet-text"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_INPUT)
def test_bad_input_answers_400_with_a_message_and_writes_nothing(
    api: APIClient, overrides: dict[str, Any], field: str
) -> None:
    before = Subscription.objects.count()

    overrides = {
        key: value(_WALLET["current"]) if callable(value) else value
        for key, value in overrides.items()
    }
    response = api.post("/api/subscriptions/", valid_payload(**overrides), format="json")

    body = assert_error(response, 400)
    assert field in body["details"], body
    assert body["error"].startswith(f"{field}:"), body
    assert Subscription.objects.count() == before


def test_missing_token_without_a_default_token_is_refused(api: APIClient, settings: Any) -> None:
    settings.TOKEN_ADDRESS = ""
    response = api.post("/api/subscriptions/", valid_payload(token_address=_MISSING), format="json")
    body = assert_error(response, 400)
    # The network is what cannot be paid on here.
    assert "has no token configured" in body["details"]["network"][0]
    assert Subscription.objects.count() == 0


def test_missing_network_uses_the_configured_chain(api: APIClient, settings: Any) -> None:
    settings.CHAIN_NETWORK = "eip155:8453"
    response = api.post("/api/subscriptions/", valid_payload(network=_MISSING), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["network"] == "eip155:8453"


def test_unsupported_default_network_is_refused(api: APIClient, settings: Any) -> None:
    settings.CHAIN_NETWORK = "eip155:999999"
    response = api.post("/api/subscriptions/", valid_payload(network=_MISSING), format="json")
    assert "network" in assert_error(response, 400)["details"]
    assert Subscription.objects.count() == 0


def test_empty_body_lists_every_missing_field(api: APIClient) -> None:
    body = assert_error(api.post("/api/subscriptions/", {}, format="json"), 400)
    assert {"service_name", "recipient_address", "amount"} <= set(body["details"])
    assert Subscription.objects.count() == 0


def test_malformed_json_is_a_400_envelope(api: APIClient) -> None:
    response = api.generic(
        "POST", "/api/subscriptions/", "{not json", content_type="application/json"
    )
    assert_error(response, 400)
    assert Subscription.objects.count() == 0


def test_another_users_wallet_cannot_be_attached(
    api: APIClient, mine: Subscription, other_user: Any
) -> None:
    their_wallet = PayerWalletFactory.create(owner=other_user)
    before = Subscription.objects.count()

    created = api.post(
        "/api/subscriptions/",
        valid_payload(wallet=their_wallet.pk, payer_address=their_wallet.address),
        format="json",
    )
    patched = api.patch(f"/api/subscriptions/{mine.pk}", {"wallet": their_wallet.pk}, format="json")

    assert "wallet" in assert_error(created, 400)["details"]
    assert "wallet" in assert_error(patched, 400)["details"]
    assert Subscription.objects.count() == before
    mine.refresh_from_db()
    assert mine.wallet_id is None


def test_staff_can_only_attach_the_owners_own_wallet(
    staff_api: APIClient, user: Any, other_user: Any, mine: Subscription
) -> None:
    owners_wallet = PayerWalletFactory.create(owner=user)
    strangers_wallet = PayerWalletFactory.create(owner=other_user)
    url = f"/api/subscriptions/{mine.pk}"

    refused = staff_api.patch(url, {"wallet": strangers_wallet.pk}, format="json")
    assert "wallet" in assert_error(refused, 400)["details"]
    mine.refresh_from_db()
    assert mine.wallet_id is None

    accepted = staff_api.patch(url, {"wallet": owners_wallet.pk}, format="json")
    assert accepted.status_code == 200, accepted.content
    mine.refresh_from_db()
    assert (mine.wallet_id, mine.payer_address) == (owners_wallet.pk, owners_wallet.address)

    # A subscription staff create is theirs: it cannot sign with a customer's wallet.
    created = staff_api.post(
        "/api/subscriptions/",
        valid_payload(wallet=owners_wallet.pk, payer_address=_MISSING),
        format="json",
    )
    assert "wallet" in assert_error(created, 400)["details"]


def test_wallet_and_a_different_payer_address_conflict(api: APIClient, user: Any) -> None:
    wallet = PayerWalletFactory.create(owner=user)
    response = api.post(
        "/api/subscriptions/",
        valid_payload(wallet=wallet.pk, payer_address=new_address()),
        format="json",
    )
    assert "payer_address" in assert_error(response, 400)["details"]
    assert Subscription.objects.count() == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"amount": "-1"},
        {"amount": "0"},
        {"amount": "1.0000001"},
        {"recipient_address": "0xabc"},
        {"recipient_address": "LOWER"},
        {},
    ],
)
def test_bad_update_answers_400_and_changes_nothing(
    api: APIClient, mine: Subscription, changes: dict[str, Any]
) -> None:
    if changes.get("recipient_address") == "LOWER":
        changes = {"recipient_address": new_address().lower()}
    before = Subscription.objects.values().get(pk=mine.pk)

    response = api.patch(f"/api/subscriptions/{mine.pk}", changes, format="json")

    assert_error(response, 400)
    assert Subscription.objects.values().get(pk=mine.pk) == before


# --- lifecycle -------------------------------------------------------------------------------


def test_lifecycle_create_update_pause_resume_cancel(api: APIClient) -> None:
    created = api.post("/api/subscriptions/", valid_payload(amount="10"), format="json")
    assert created.status_code == 201, created.content
    subscription_id = created.json()["id"]
    url = f"/api/subscriptions/{subscription_id}"

    patched = api.patch(url, {"amount": "12.345678", "service_name": "Renamed"}, format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["amount"] == "12.345678"
    assert patched.json()["service_name"] == "Renamed"
    assert Subscription.objects.get(pk=subscription_id).amount == Decimal("12.345678")

    paused = api.post(f"{url}/pause")
    assert paused.status_code == 200, paused.content
    assert paused.json()["status"] == "paused"
    assert paused.json()["paused_at"] is not None

    resumed = api.post(f"{url}/resume")
    assert resumed.status_code == 200, resumed.content
    assert resumed.json()["status"] == "active"
    assert resumed.json()["paused_at"] is None
    assert Subscription.objects.get(pk=subscription_id).status == "active"

    canceled = api.post(f"{url}/cancel")
    assert canceled.status_code == 200, canceled.content
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["auto_pay_enabled"] is False
    assert canceled.json()["canceled_at"] is not None

    assert_error(api.post(f"{url}/resume"), 400)
    assert_error(api.post(f"{url}/pause"), 400)
    assert_error(api.patch(url, {"amount": "1"}, format="json"), 400)
    stored = Subscription.objects.get(pk=subscription_id)
    assert stored.status == "canceled"
    assert stored.amount == Decimal("12.345678")


def test_retrieve_answers_the_subscription(api: APIClient, mine: Subscription) -> None:
    body = api.get(f"/api/subscriptions/{mine.pk}").json()
    assert body["id"] == mine.pk
    assert body["amount"] == "10"
    assert body["service_name"] == "My Service"
    assert "owner" not in body


def test_non_numeric_subscription_id_is_a_json_404(api: APIClient) -> None:
    assert_error(api.get("/api/subscriptions/abc"), 404)


# --- manual trigger --------------------------------------------------------------------------


def test_trigger_answers_the_baseline_shape(api: APIClient, mine: Subscription) -> None:
    response = api.post(f"/api/subscriptions/{mine.pk}/trigger-payment")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"success", "message", "data"}
    assert body["success"] is True
    assert body["message"] == "Payment job queued successfully"
    assert set(body["data"]) == {"jobId", "subscriptionId"}
    assert body["data"]["subscriptionId"] == str(mine.pk)
    assert isinstance(body["data"]["jobId"], str)
    job = Job.objects.get(pk=body["data"]["jobId"])
    assert job.status == Job.Status.WAITING
    assert job.source == Job.Source.MANUAL
    assert job.subscription_id == mine.pk
    payment = job.payment
    assert payment.status == Payment.Status.PENDING
    assert payment.period_index == 0
    assert payment.period_start == mine.billing_anchor
    assert payment.amount == mine.amount


def test_trigger_with_trailing_slash_works_too(api: APIClient, mine: Subscription) -> None:
    assert api.post(f"/api/subscriptions/{mine.pk}/trigger-payment/").status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"auto_pay_enabled": False},
        {"status": Subscription.Status.PAUSED},
        {"status": Subscription.Status.CANCELED, "auto_pay_enabled": False},
        {"status": Subscription.Status.CANCELED},
        {"status": Subscription.Status.UNPAID},
    ],
)
def test_trigger_is_refused_when_the_subscription_cannot_pay(
    api: APIClient, user: Any, fields: dict[str, Any]
) -> None:
    subscription = SubscriptionFactory.create(owner=user, **fields)

    response = api.post(f"/api/subscriptions/{subscription.pk}/trigger-payment")

    assert_error(response, 400)
    assert Payment.objects.count() == 0
    assert Job.objects.count() == 0


def test_trigger_after_pause_is_refused(api: APIClient, mine: Subscription) -> None:
    assert api.post(f"/api/subscriptions/{mine.pk}/pause").status_code == 200
    assert_error(api.post(f"/api/subscriptions/{mine.pk}/trigger-payment"), 400)
    assert Job.objects.count() == 0


def test_trigger_twice_is_a_conflict(api: APIClient, mine: Subscription) -> None:
    first = api.post(f"/api/subscriptions/{mine.pk}/trigger-payment")
    assert first.status_code == 200, first.content

    second = api.post(f"/api/subscriptions/{mine.pk}/trigger-payment")

    assert "in flight" in assert_error(second, 409)["error"]
    assert Payment.objects.count() == 1
    assert Job.objects.count() == 1


def test_trigger_when_the_current_period_is_paid_is_a_conflict(api: APIClient, user: Any) -> None:
    anchor = timezone.now() - timedelta(days=3)
    subscription = SubscriptionFactory.create(owner=user, billing_anchor=anchor)
    payment_for(
        subscription,
        0,
        status=Payment.Status.COMPLETED,
        transaction_hash="0x" + "ab" * 32,
        completed_at=timezone.now(),
    )
    next_start = subscription.period_start(1)
    Subscription.objects.filter(pk=subscription.pk).update(
        next_period_index=1,
        next_period_due_at=next_start,
        next_payment_due_at=next_start,
    )

    response = api.post(f"/api/subscriptions/{subscription.pk}/trigger-payment")

    assert "paid" in assert_error(response, 409)["error"]
    assert Payment.objects.count() == 1
    assert Job.objects.count() == 0


def test_trigger_reuses_a_failed_payment_of_the_period(api: APIClient, mine: Subscription) -> None:
    first = payment_trigger(subscription=mine)
    Job.objects.filter(pk=first.pk).update(status=Job.Status.FAILED, error_code="rpc_timeout")
    Payment.objects.filter(pk=first.payment_id).update(
        status=Payment.Status.FAILED, error_code="rpc_timeout", error_message="timed out"
    )

    response = api.post(f"/api/subscriptions/{mine.pk}/trigger-payment")

    assert response.status_code == 200, response.content
    job = Job.objects.get(pk=response.json()["data"]["jobId"])
    assert job.payment_id == first.payment_id
    assert Payment.objects.count() == 1
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.PENDING
    assert payment.error_code == ""


def test_trigger_on_a_subscription_whose_first_period_has_not_started(
    api: APIClient, user: Any
) -> None:
    subscription = SubscriptionFactory.create(
        owner=user, billing_anchor=timezone.now() + timedelta(days=2)
    )
    response = api.post(f"/api/subscriptions/{subscription.pk}/trigger-payment")
    assert_error(response, 409)
    assert Payment.objects.count() == 0
    assert Job.objects.count() == 0


def test_trigger_before_the_first_period_does_not_claim_it_was_paid(
    api: APIClient, user: Any
) -> None:
    subscription = SubscriptionFactory.create(
        owner=user, billing_anchor=timezone.now() + timedelta(days=2)
    )
    response = api.post(f"/api/subscriptions/{subscription.pk}/trigger-payment")
    assert "paid" not in assert_error(response, 409)["error"]


# --- the message reaches the broker after commit ----------------------------------------------


def _queued_messages(redis_client: Any) -> list[dict[str, Any]]:
    return [
        json.loads(raw) for raw in redis_client.lrange(settings.CELERY_TASK_DEFAULT_QUEUE, 0, -1)
    ]


def test_trigger_publishes_only_when_the_transaction_commits(
    api: APIClient, mine: Subscription, clean_redis: Any, django_capture_on_commit_callbacks: Any
) -> None:
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post(f"/api/subscriptions/{mine.pk}/trigger-payment")
    assert response.status_code == 200, response.content
    # Answered, but the job's message waits for the commit (the test transaction never commits).
    assert clean_redis.llen(queue) == 0
    assert len(callbacks) == 1

    callbacks[0]()

    assert clean_redis.llen(queue) == 1


@pytest.mark.django_db(transaction=True)
def test_trigger_publishes_one_message_with_the_job_id_after_commit(
    transactional_db: Any, clean_redis: Any, user: Any
) -> None:
    client = APIClient()
    client.force_authenticate(user)
    subscription = SubscriptionFactory.create(owner=user)
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    assert clean_redis.llen(queue) == 0

    response = client.post(f"/api/subscriptions/{subscription.pk}/trigger-payment")

    assert response.status_code == 200, response.content
    assert clean_redis.llen(queue) == 1
    (message,) = _queued_messages(clean_redis)
    assert message["headers"]["task"] == "autopay.process_autopay_job"
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == [response.json()["data"]["jobId"]]
    assert kwargs == {}

    # A refused trigger publishes nothing.
    assert client.post(f"/api/subscriptions/{subscription.pk}/trigger-payment").status_code == 409
    assert clean_redis.llen(queue) == 1
