"""The operator console's pages through the admin (real PostgreSQL and Redis): one money format,
dates for Unix timestamps, explorer links, the subscription modes of the add form, the queue
depth history drawn on the dashboard, settlement transactions and relayers."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from eth_account import Account

from autopay.tasks import recover_jobs
from jobs.history import queue_depth_history, queue_depth_record
from jobs.models import Job
from subscriptions.models import Payment, PresignedAuthorization, Subscription
from subscriptions.services import payment_build
from tests.factories import (
    PayerWalletFactory,
    SubscriptionFactory,
    new_address,
    settled_payment,
)
from tests.test_admin import admin_form_data

pytestmark = pytest.mark.django_db

EXPLORER = "https://explorer.example"


@pytest.fixture
def operator(client: Client, staff_user: Any) -> Client:
    client.force_login(staff_user)
    return client


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


def test_amounts_carry_the_token_decimals_and_symbol_everywhere(
    operator: Client, settings: Any
) -> None:
    settings.TOKEN_SYMBOL = "USDX"
    subscription = SubscriptionFactory.create(amount=Decimal("7.5"))
    payment = settled_payment(subscription, index=0, transaction_hash="0x" + "11" * 32)

    assert "7.500000 USDX" in page(operator, "/admin/subscriptions/subscription/")
    assert "7.500000 USDX" in page(operator, "/admin/subscriptions/payment/")
    assert "7.500000 USDX" in page(operator, "/admin/jobs/job/")
    assert "7.500000 USDX" in page(operator, f"/admin/subscriptions/payment/{payment.pk}/change/")
    assert "7.500000 USDX" in page(operator, "/admin/dashboard/")
    exported = operator.get("/api/payments/?format=csv")
    lines = b"".join(exported.streaming_content).decode().splitlines()  # type: ignore[attr-defined]
    header = lines[0].split(",")
    assert lines[1].split(",")[header.index("token_symbol")] == "USDX"


def test_payment_page_dates_timestamps_and_links_the_explorer(
    operator: Client, settings: Any
) -> None:
    settings.CHAIN_EXPLORER_URL = EXPLORER + "/"
    subscription = SubscriptionFactory.create()
    payment = settled_payment(subscription, index=0, transaction_hash="0x" + "22" * 32)

    html = page(operator, f"/admin/subscriptions/payment/{payment.pk}/change/")

    assert f'href="{EXPLORER}/tx/{payment.transaction_hash}"' in html
    assert f'href="{EXPLORER}/address/{payment.payer_address}"' in html
    assert "2026-01-01 00:00:00 UTC (1767225600)" in html
    assert "2026-01-01 01:00:00 UTC (1767229200)" in html
    # Without an explorer the hash is plain text, never a broken link.
    settings.CHAIN_EXPLORER_URL = ""
    assert "/tx/" not in page(operator, f"/admin/subscriptions/payment/{payment.pk}/change/")


def test_network_entries_name_their_own_symbol_and_explorer(
    operator: Client, settings: Any
) -> None:
    settings.AUTOPAY_NETWORKS = [
        {"network": "eip155:31337", "token_symbol": "USDC", "explorer_url": EXPLORER},
        {"network": "eip155:8453", "token_symbol": "bUSDC", "explorer_url": "https://base.ex"},
    ]
    subscription = SubscriptionFactory.create(network="eip155:8453")
    payment = settled_payment(subscription, index=0, transaction_hash="0x" + "33" * 32)

    html = page(operator, f"/admin/subscriptions/payment/{payment.pk}/change/")

    assert "7.500000 bUSDC" in html
    assert f'href="https://base.ex/tx/{payment.transaction_hash}"' in html


def test_presigned_authorizations_show_decimal_amounts_and_dates(operator: Client) -> None:
    subscription = SubscriptionFactory.create(mode=Subscription.Mode.PRESIGNED, wallet=None)
    PresignedAuthorization.objects.create(
        subscription=subscription,
        period_index=0,
        period_start=subscription.billing_anchor,
        payer_address=subscription.payer_address,
        recipient_address=subscription.recipient_address,
        token_address=subscription.token_address,
        chain_id=31337,
        value_atomic=Decimal(3_500_000),
        valid_after=1_767_225_600,
        valid_before=int(time.time()) + 86400,
        nonce="0x" + "00" * 32,
        signature="0x" + "11" * 65,
    )

    listing = page(operator, "/admin/subscriptions/presignedauthorization/")
    assert "3.500000 USDC" in listing and "3500000<" not in listing
    html = page(operator, f"/admin/subscriptions/subscription/{subscription.pk}/change/")
    assert "server-held signer" not in html
    assert "signs each period ahead (pre-signed): no server-held wallet." in html
    assert re.search(r"Signed periods remaining:.*?<div class=\"readonly\">1</div>", html, re.S)


def test_subscription_page_explains_both_cursors_and_shows_the_resource(
    operator: Client, settings: Any
) -> None:
    settings.AUTOPAY_RESOURCE_ALLOWED_HOSTS = ["paid.example"]
    subscription = SubscriptionFactory.create(resource_url="https://paid.example/report")

    html = page(operator, f"/admin/subscriptions/subscription/{subscription.pk}/change/")

    assert "Start of the earliest period not paid yet" in html
    assert "Start of the next period the scan will open a payment for" in html
    assert "https://paid.example/report" in html


def add_subscription(client: Client, owner: Any, **fields: Any) -> Any:
    """Post the admin's add form as a browser would (the test_admin form, billed from 2025-01-31
    10:00 UTC) with ``fields`` changed; "wallet": "" posts none."""
    return client.post(
        "/admin/subscriptions/subscription/add/",
        admin_form_data(None, owner=str(owner.pk), **{"resource_method": "GET", **fields}),
    )


def test_admin_creates_a_presigned_subscription(
    operator: Client, staff_user: Any, settings: Any
) -> None:
    payer = new_address()
    response = add_subscription(
        operator, staff_user, mode="presigned", payer_address=payer, wallet=""
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    subscription = Subscription.objects.get()
    assert subscription.mode == Subscription.Mode.PRESIGNED
    assert subscription.payer_address == payer and subscription.wallet_id is None
    assert subscription.next_payment_due_at == datetime(2025, 1, 31, 10, tzinfo=UTC)


def test_admin_refuses_a_presigned_subscription_with_a_wallet_or_without_a_signer(
    operator: Client, staff_user: Any, settings: Any
) -> None:
    with_wallet = add_subscription(
        operator, staff_user, mode="presigned", payer_address=new_address()
    )
    without_signer = add_subscription(operator, staff_user, mode="presigned", wallet="")

    assert "A pre-signed subscription has no server-held wallet." in with_wallet.content.decode()
    assert "Name the address that will sign each period." in without_signer.content.decode()
    assert not Subscription.objects.exists()


def test_admin_creates_an_x402_http_subscription_on_allowed_hosts_only(
    operator: Client, staff_user: Any, settings: Any
) -> None:
    settings.AUTOPAY_RESOURCE_ALLOWED_HOSTS = ["paid.example"]
    wallet = PayerWalletFactory.create(owner=staff_user)
    refused = add_subscription(
        operator,
        staff_user,
        wallet=str(wallet.pk),
        resource_url="https://elsewhere.example/pay",
    )
    assert refused.status_code == 200 and not Subscription.objects.exists()

    response = add_subscription(
        operator,
        staff_user,
        mode="custodial",
        wallet=str(wallet.pk),
        resource_url="https://paid.example/pay",
        resource_method="POST",
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    subscription = Subscription.objects.get()
    assert subscription.resource_url == "https://paid.example/pay"
    assert subscription.resource_method == "POST"
    assert subscription.payer_address == wallet.address


def test_dashboard_draws_the_sampled_queue_depth_per_network(
    operator: Client, clean_redis: Any, settings: Any
) -> None:
    subscription = SubscriptionFactory.create()
    jobs = [
        Job.objects.create(subscription=subscription, payment=_saved_payment(subscription, index))
        for index in range(3)
    ]
    queue_depth_record(now=time.time() - 120)
    Job.objects.filter(pk=jobs[0].pk).update(status=Job.Status.COMPLETED)
    queue_depth_record()

    html = page(operator, "/admin/dashboard/")

    chart = re.search(
        r'<figure class="autopay-chart" id="chart-queue-depth">.*?</figure>', html, re.S
    )
    assert chart is not None
    values = re.findall(r"eip155:31337: (\d+)</title>", chart.group(0))
    assert values == ["3", "2"]


def test_the_recovery_task_samples_open_jobs_per_network(clean_redis: Any) -> None:
    subscription = SubscriptionFactory.create()
    for index in range(2):
        Job.objects.create(subscription=subscription, payment=_saved_payment(subscription, index))

    recover_jobs.apply()

    samples = queue_depth_history(hours=1)
    assert samples is not None and samples[-1].open_jobs == {"eip155:31337": 2}


def _saved_payment(subscription: Subscription, index: int) -> Payment:
    payment = payment_build(subscription=subscription, index=index)
    payment.save()
    return payment


def test_settlement_pages_group_payments_by_transaction(operator: Client) -> None:
    subscription = SubscriptionFactory.create()
    batch_hash = "0x" + "44" * 32
    first = settled_payment(subscription, index=0, transaction_hash=batch_hash)
    second = settled_payment(subscription, index=1, transaction_hash=batch_hash)
    settled_payment(subscription, index=2, transaction_hash="0x" + "55" * 32)

    listing = page(operator, "/admin/dashboard/settlements/")
    row = re.search(rf'<tr id="settlement-{batch_hash}">.*?</tr>', listing, re.S)
    assert row is not None
    cells = re.findall(r'<td class="number">([^<]*)</td>', row.group(0))
    assert cells[:5] == ["2", "15.000000 USDC", "7", "120000", "0.00024 ETH"]

    detail = page(operator, f"/admin/dashboard/settlements/{batch_hash}/")
    assert f"/admin/subscriptions/payment/{first.pk}/change/" in detail
    assert f"/admin/subscriptions/payment/{second.pk}/change/" in detail
    assert operator.get(f"/admin/dashboard/settlements/0x{'66' * 32}/").status_code == 404


def test_relayers_page_degrades_to_unknown_when_the_chain_does_not_answer(
    operator: Client, settings: Any
) -> None:
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"  # nothing listens: connection refused
    settings.AUTOPAY_HEALTH_TIMEOUT_SECONDS = 1.0
    started = time.monotonic()

    html = page(operator, "/admin/dashboard/relayers/")

    assert time.monotonic() - started < 10
    assert "unknown" in html and "in the pool" in html


def test_relayers_page_reads_balance_and_nonce_from_the_chain(
    operator: Client, engine_settings: Any, relayer_key: str
) -> None:
    html = page(operator, "/admin/dashboard/relayers/")

    address = Account.from_key(relayer_key).address
    row = re.search(rf"{address}.*?</tr>", html, re.S)
    assert row is not None
    cells = re.findall(r'<td class="number">([^<]*)', row.group(0))
    assert cells[0].endswith(" ETH") and Decimal(cells[0].split()[0]) > 0
    assert int(cells[1]) >= 0 and cells[2] == "0"


def test_job_list_ages_are_recent(operator: Client) -> None:
    subscription = SubscriptionFactory.create()
    job = Job.objects.create(subscription=subscription, payment=_saved_payment(subscription, 0))
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=12))

    html = page(operator, "/admin/jobs/job/")

    assert "12 min ago" in html
    assert str(job.pk)[:8] in html


def test_the_dashboard_shows_liveness_and_payments_readiness(
    operator: Client, settings: Any
) -> None:
    html = page(operator, "/admin/dashboard/")
    assert 'id="health-live"' in html and "/health/live" in html
    assert 'id="health-ready"' in html and "/health/ready" in html

    settings.AUTOPAY_KEY_ENCRYPTION_KEYS = ["not-a-fernet-key"]  # the operator's mistake
    broken = page(operator, "/admin/dashboard/")
    ready = broken[broken.index('id="health-ready"') :][:600]
    assert "NOT READY" in ready and "misconfigured" in ready
    live = broken[broken.index('id="health-live"') :][:300]
    assert "DOWN" not in live, "liveness is not payments' readiness"


def test_the_api_names_the_token_of_every_amount(api: Any, user: Any, settings: Any) -> None:
    settings.TOKEN_SYMBOL = "USDX"
    subscription = SubscriptionFactory.create(owner=user, amount=Decimal("7.5"))
    settled_payment(subscription, index=0, transaction_hash="0x" + "12" * 32)

    sub = api.get(f"/api/subscriptions/{subscription.pk}/").json()
    assert (sub["amount"], sub["token_symbol"], sub["token_decimals"]) == ("7.5", "USDX", 6)
    (pay,) = api.get("/api/payments/").json()["results"]
    assert (pay["amount"], pay["token_symbol"], pay["token_decimals"]) == ("7.5", "USDX", 6)
    schema = api.get("/api/schema/?format=json").json()
    described = schema["components"]["schemas"]["PaymentOutput"]["properties"]["amount"]
    assert "token_symbol" in described["description"]


def test_volume_and_success_rate_are_drawn_per_network(operator: Client) -> None:
    first = SubscriptionFactory.create(network="eip155:31337")
    second = SubscriptionFactory.create(network="eip155:31338")
    settled_payment(first, index=0, transaction_hash="0x" + "21" * 32)
    settled_payment(second, index=0, transaction_hash="0x" + "22" * 32)

    html = page(operator, "/admin/dashboard/")

    for chart in ("chart-volume-per-day", "chart-success-rate"):
        svg = html[html.index(f'id="{chart}"') :]
        svg = svg[: svg.index("</svg>")]
        assert "eip155:31337" in svg and "eip155:31338" in svg, chart
