"""The operator console in a real headless Chromium against a live server (real PostgreSQL and
Redis): log in, dashboard, jobs list, a job page, retry a failed job, export CSV, payment,
subscription, settlement and relayer pages; nothing overflows at 1280 px. Screenshots go to
var/screenshots/ (kept by CI, ignored by git)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from jobs.models import Job, JobAttempt
from subscriptions.models import Payment, Subscription
from tests.factories import SubscriptionFactory, UserFactory, failed_job, settled_payment

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("AUTOPAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH = 1280
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
PASSWORD = "correct-horse-battery"
EXPLORER = "https://explorer.example"
TRANSACTION = "0x" + "ab" * 32

# Elements whose content is wider than their box: clipped (or scrolled) content.
OVERFLOW_SCRIPT = """
(width) => {
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > width) problems.push(`page ${root.scrollWidth}px wide`);
  for (const el of document.querySelectorAll('table, .results, pre, .readonly, figure')) {
    const name = `${el.tagName}#${el.id}.${el.className}`;
    if (el.scrollWidth > el.clientWidth + 1) {
      problems.push(`${name}: ${el.scrollWidth} > ${el.clientWidth}`);
    }
    const right = el.getBoundingClientRect().right;
    if (right > root.clientWidth + 1) problems.push(`${name} ends at ${right}`);
  }
  return problems;
}
"""


@pytest.fixture
def console_data(settings: Any) -> dict[str, Any]:
    """An operator, a failed job with two attempts, and a batch transaction of two payments."""
    settings.CHAIN_EXPLORER_URL = EXPLORER
    # Nothing listens here: the relayers page must show "unknown", not fail.
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"
    settings.AUTOPAY_HEALTH_TIMEOUT_SECONDS = 1.0
    operator = UserFactory.create(username="operator", is_staff=True, is_superuser=True)
    subscription = SubscriptionFactory.create(service_name="Pro plan with a long service name")
    job = failed_job(subscription, index=0, code="insufficient_balance")
    started = timezone.now() - timedelta(minutes=6)
    for number, outcome in ((1, JobAttempt.Outcome.RETRY), (2, JobAttempt.Outcome.FAILED)):
        JobAttempt.objects.create(
            job=job,
            number=number,
            worker="celery@worker-with-a-long-hostname.example.internal-1234",
            outcome=outcome,
            started_at=started + timedelta(seconds=4 * number),
            finished_at=started + timedelta(seconds=4 * number + 1),
            error_code="insufficient_balance",
            error_message="The payer holds 1.000000 USDC, the period costs 12.500000 USDC. " * 4,
            transaction_hashes=[TRANSACTION] if number == 2 else [],
        )
    Job.objects.filter(pk=job.pk).update(
        data={"subscriptionId": str(subscription.pk), "nested": {"keys": list(range(30))}}
    )
    batch = [
        settled_payment(
            subscription,
            index=index,
            transaction_hash="0x" + "cd" * 32,
            amount="12.5",
            gas_used=98765,
            fee_wei=197_530_000_000_000,
        )
        for index in (1, 2)
    ]
    return {"operator": operator, "job": job, "subscription": subscription, "batch": batch}


@pytest.fixture
def page(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: ./bin/test installs Debian's chromium")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM queries
    # (between page steps, never concurrent with them) are safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": WIDTH, "height": 900}, accept_downloads=True
        )
        context.set_default_timeout(15_000)
        yield context.new_page()
        browser.close()


def look(page: Any, name: str) -> None:
    """Screenshot the page and check that nothing is wider than the window or clipped."""
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    assert page.evaluate(OVERFLOW_SCRIPT, WIDTH) == [], name


def test_operator_console_in_a_browser(
    live_server: Any, page: Any, console_data: dict[str, Any]
) -> None:
    base = live_server.url
    job: Job = console_data["job"]

    # Log in.
    page.goto(f"{base}/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#autopay-dashboard-link")

    # Dashboard: charts drawn on the server (no request leaves the site), tables, links.
    outside: list[str] = []
    page.on(
        "request",
        lambda request: outside.append(request.url) if not request.url.startswith(base) else None,
    )
    page.goto(f"{base}/admin/dashboard/")
    assert page.locator("#charts svg").count() >= 4
    assert "25.000000 USDC" in page.inner_text("#volume-per-day")
    assert page.locator("#chart-settlements-per-minute circle title").count() > 0
    look(page, "01-dashboard")
    assert outside == []

    # Jobs list: the columns an operator scans, at 1280 px.
    page.goto(f"{base}/admin/jobs/job/")
    headers = page.inner_text("#result_list thead")
    for column in ("Job", "Status", "Progress", "Attempts", "Error code", "Amount", "Network"):
        assert column.upper() in headers.upper()
    row = page.locator("#result_list tbody tr", has_text=str(job.pk)[:8])
    assert "insufficient_balance" in row.inner_text()
    assert "USDC" in row.inner_text()
    look(page, "02-jobs")

    # A job page: the attempts timeline with explorer links, data pretty-printed.
    page.goto(f"{base}/admin/jobs/job/{job.pk}/change/")
    timeline = page.locator("table.attempt-timeline")
    assert timeline.locator("tbody tr").count() == 2
    link = timeline.locator(f'a[href="{EXPLORER}/tx/{TRANSACTION}"]')
    assert link.count() == 1
    assert '"nested"' in page.inner_text("pre.autopay-json")
    look(page, "03-job")

    # Retry the failed job from the jobs list (admin action).
    page.goto(f"{base}/admin/jobs/job/?status__exact=failed")
    page.check(f'input[name=_selected_action][value="{job.pk}"]')
    page.select_option("select[name=action]", "retry_selected")
    page.click("button[name=index]")
    assert "1 job(s) queued for retry." in page.inner_text(".messagelist")
    retried = Job.objects.get(payment=job.payment, status=Job.Status.WAITING)
    assert retried.source == Job.Source.RETRY
    look(page, "04-retried")

    # Export CSV: every selected job, the token's symbol beside its exact amount.
    page.goto(f"{base}/admin/jobs/job/")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "export_csv")
    with page.expect_download() as download_info:
        page.click("button[name=index]")
    path = download_info.value.path()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert sorted(row["job_id"] for row in rows) == sorted(
        str(pk) for pk in Job.objects.values_list("pk", flat=True)
    )
    assert {row["token_symbol"] for row in rows} == {"USDC"}

    # A payment page: its timeline, the transaction linked to the explorer.
    payment: Payment = console_data["batch"][0]
    page.goto(f"{base}/admin/subscriptions/payment/{payment.pk}/change/")
    assert page.locator(f'a[href="{EXPLORER}/tx/{payment.transaction_hash}"]').count() >= 1
    assert "12.500000 USDC" in page.inner_text("#content-main")
    look(page, "05-payment-page")

    # The payments and subscriptions lists fit too.
    page.goto(f"{base}/admin/subscriptions/payment/")
    assert "12.500000 USDC" in page.inner_text("#result_list")
    look(page, "05-payments")
    page.goto(f"{base}/admin/subscriptions/subscription/")
    look(page, "06-subscriptions")

    # The subscription page explains its two cursors.
    subscription: Subscription = console_data["subscription"]
    page.goto(f"{base}/admin/subscriptions/subscription/{subscription.pk}/change/")
    assert "Start of the earliest period not paid yet" in page.inner_text("#content-main")
    look(page, "06-subscription-page")

    # The settlement transaction: both payments of the batch, gas and fee.
    page.goto(f"{base}/admin/dashboard/settlements/")
    summary = page.inner_text("#settlements")
    assert "25.000000 USDC" in summary and "98765" in summary and "0.00019753 ETH" in summary
    look(page, "07-settlements")
    page.click("#settlements a:text('details')")
    assert page.locator("#settlement-payments tbody tr").count() == 2
    look(page, "08-settlement")

    # Relayers: the chain does not answer, the page still renders ("unknown").
    page.goto(f"{base}/admin/dashboard/relayers/")
    assert "unknown" in page.inner_text("table.relayers")
    look(page, "09-relayers")
