"""The operator dashboard in the admin and the analytics API, on real PostgreSQL and Redis."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jobs import analytics
from jobs.models import Job
from subscriptions.models import Payment, Subscription
from subscriptions.services import payment_build
from tests.factories import SubscriptionFactory, failed_job

pytestmark = pytest.mark.django_db

DASHBOARD_URL = "/admin/dashboard/"


def day_start(days_ago: int = 0) -> datetime:
    today = timezone.localdate()
    return timezone.make_aware(
        datetime.combine(today - timedelta(days=days_ago), datetime.min.time())
    )


def finished_payment(
    subscription: Subscription, *, index: int, status: str, amount: str, at: datetime
) -> Payment:
    """A completed or failed payment whose outcome happened at ``at``."""
    payment = payment_build(subscription=subscription, index=index)
    payment.amount = Decimal(amount)
    payment.status = status
    if status == Payment.Status.COMPLETED:
        payment.completed_at = at
        payment.transaction_hash = "0x" + f"{subscription.pk:04x}{index:060x}"
    else:
        payment.error_code = "insufficient_balance"
    payment.save()
    # updated_at is auto_now: a queryset update sets the failure's recorded time.
    Payment.objects.filter(pk=payment.pk).update(updated_at=at)
    return payment


@pytest.fixture
def payments(user: Any, other_user: Any) -> dict[str, Subscription]:
    """Two services of ``user`` over two days, one of another user, and rows outside the window.

    Today:     Alpha 12.5 + 7.25 completed, 3.1 failed; Beta 40 failed.
    Yesterday: Alpha 100.000001 completed; Beta 0.75 completed, 2 failed.
    """
    alpha = SubscriptionFactory.create(owner=user, service_name="Alpha")
    beta = SubscriptionFactory.create(owner=user, service_name="Beta")
    foreign = SubscriptionFactory.create(owner=other_user, service_name="Gamma")
    today = day_start(0) + timedelta(seconds=1)
    yesterday = day_start(1) + timedelta(hours=12)
    done, failed = Payment.Status.COMPLETED, Payment.Status.FAILED
    finished_payment(alpha, index=0, status=done, amount="12.5", at=today)
    finished_payment(alpha, index=1, status=done, amount="7.25", at=today)
    finished_payment(alpha, index=2, status=failed, amount="3.1", at=today)
    finished_payment(alpha, index=3, status=done, amount="100.000001", at=yesterday)
    finished_payment(beta, index=0, status=failed, amount="40", at=today)
    finished_payment(beta, index=1, status=done, amount="0.75", at=yesterday)
    finished_payment(beta, index=2, status=failed, amount="2", at=yesterday)
    finished_payment(foreign, index=0, status=done, amount="999", at=today)
    # Outside the 14-day window, and not finished: never counted.
    finished_payment(alpha, index=4, status=done, amount="5", at=day_start(20))
    pending = payment_build(subscription=beta, index=3)
    pending.save()
    return {"alpha": alpha, "beta": beta, "foreign": foreign}


# --- the analytics selectors and API ----------------------------------------------------------


def test_analytics_figures_match_the_rows(payments: Any, user: Any) -> None:
    report = analytics.payment_analytics(user=user, days=14)

    assert len(report.per_day) == 14
    assert report.per_day[-1].day == timezone.localdate()
    assert report.per_day[0].day == timezone.localdate() - timedelta(days=13)
    today, yesterday = report.per_day[-1].volume, report.per_day[-2].volume
    assert (today.completed, today.failed) == (2, 2)
    assert today.completed_amount == Decimal("19.75")
    assert today.failed_amount == Decimal("43.1")
    assert today.success_rate == 0.5
    assert (yesterday.completed, yesterday.failed) == (2, 1)
    assert yesterday.completed_amount == Decimal("100.750001")
    assert yesterday.failed_amount == Decimal("2")
    assert yesterday.success_rate == 0.6667
    assert all(row.volume.finished == 0 for row in report.per_day[:-2])
    assert all(row.volume.success_rate is None for row in report.per_day[:-2])

    by_service = {row.service_name: row.volume for row in report.per_service}
    assert [row.service_name for row in report.per_service] == ["Alpha", "Beta"]
    assert (by_service["Alpha"].completed, by_service["Alpha"].failed) == (3, 1)
    assert by_service["Alpha"].completed_amount == Decimal("119.750001")
    assert by_service["Alpha"].failed_amount == Decimal("3.1")
    assert by_service["Alpha"].success_rate == 0.75
    assert (by_service["Beta"].completed, by_service["Beta"].failed) == (1, 2)
    assert by_service["Beta"].completed_amount == Decimal("0.75")
    assert by_service["Beta"].failed_amount == Decimal("42")
    assert by_service["Beta"].success_rate == 0.3333

    assert (report.totals.completed, report.totals.failed) == (4, 3)
    assert report.totals.completed_amount == Decimal("120.500001")
    assert report.totals.failed_amount == Decimal("45.1")
    assert report.totals.success_rate == 0.5714
    # The sums are the rows' sums, exactly.
    assert report.totals.completed_amount == sum(
        (row.volume.completed_amount for row in report.per_day), Decimal(0)
    )


def test_analytics_window_includes_older_rows_when_asked(payments: Any, user: Any) -> None:
    report = analytics.payment_analytics(user=user, days=30)
    assert report.totals.completed == 5
    assert report.totals.completed_amount == Decimal("125.500001")
    assert len(report.per_day) == 30


def test_analytics_api_answers_exact_strings(payments: Any, api: Any) -> None:
    response = api.get("/api/analytics", {"days": 14})

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert data["days"] == 14
    assert data["to"] == timezone.localdate().isoformat()
    assert len(data["perDay"]) == 14
    assert data["perDay"][-1] == {
        "date": timezone.localdate().isoformat(),
        "completed": 2,
        "failed": 2,
        "completedAmount": "19.75",
        "failedAmount": "43.1",
        "successRate": 0.5,
    }
    assert data["perDay"][0]["completedAmount"] == "0"
    assert data["perDay"][0]["successRate"] is None
    assert data["perService"] == [
        {
            "serviceName": "Alpha",
            "completed": 3,
            "failed": 1,
            "completedAmount": "119.750001",
            "failedAmount": "3.1",
            "successRate": 0.75,
        },
        {
            "serviceName": "Beta",
            "completed": 1,
            "failed": 2,
            "completedAmount": "0.75",
            "failedAmount": "42",
            "successRate": 0.3333,
        },
    ]
    assert data["totals"] == {
        "completed": 4,
        "failed": 3,
        "completedAmount": "120.500001",
        "failedAmount": "45.1",
        "successRate": 0.5714,
    }


def test_analytics_is_scoped_per_user(
    payments: Any, api: Any, other_api: Any, staff_api: Any
) -> None:
    mine = api.get("/api/analytics").json()["data"]
    theirs = other_api.get("/api/analytics").json()["data"]
    everyone = staff_api.get("/api/analytics").json()["data"]

    assert mine["days"] == analytics.DEFAULT_DAYS
    assert {row["serviceName"] for row in mine["perService"]} == {"Alpha", "Beta"}
    assert theirs["perService"] == [
        {
            "serviceName": "Gamma",
            "completed": 1,
            "failed": 0,
            "completedAmount": "999",
            "failedAmount": "0",
            "successRate": 1.0,
        }
    ]
    assert theirs["totals"]["completedAmount"] == "999"
    assert everyone["totals"]["completed"] == 5
    assert everyone["totals"]["completedAmount"] == "1119.500001"
    assert [row["serviceName"] for row in everyone["perService"]] == ["Gamma", "Alpha", "Beta"]


@pytest.mark.parametrize("days", ["abc", "0", "-3", "367", "1.5", ""])
def test_analytics_rejects_bad_days(api: Any, days: str) -> None:
    response = api.get("/api/analytics", {"days": days})

    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["error"].startswith("days:")


def test_analytics_accepts_the_bounds(api: Any) -> None:
    assert len(api.get("/api/analytics", {"days": 1}).json()["data"]["perDay"]) == 1
    assert len(api.get("/api/analytics", {"days": 366}).json()["data"]["perDay"]) == 366


def test_analytics_needs_authentication(anonymous_api: Any) -> None:
    response = anonymous_api.get("/api/analytics")
    assert response.status_code in (401, 403)
    assert response.json()["success"] is False


# --- the admin dashboard ----------------------------------------------------------------------


@pytest.fixture
def staff_client(staff_user: Any) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    return client


def test_dashboard_url_is_in_the_admin() -> None:
    assert reverse("admin:autopay-dashboard") == DASHBOARD_URL


def test_staff_sees_the_figures(payments: Any, staff_client: Client, clean_redis: Any) -> None:
    job = failed_job(payments["beta"], index=9, code="authorization_expired")
    # Keep its payment out of the volume figures below (it failed long ago).
    Payment.objects.filter(pk=job.payment_id).update(updated_at=day_start(30))
    Job.objects.create(
        subscription=payments["alpha"], payment=payments["alpha"].payments.first(), data={}
    )

    response = staff_client.get(DASHBOARD_URL)

    assert response.status_code == 200
    html = response.content.decode()
    # Queue health: counts by status, broker queue length, oldest waiting job, failure rates.
    assert re.search(r'id="count-waiting">\s*<span class="figure">1</span>', html)
    assert re.search(r'id="count-failed">\s*<span class="figure">1</span>', html)
    assert re.search(r'id="queue-length">\s*<span class="figure">0</span>', html)
    assert 'id="oldest-waiting"' in html and " s</span>" in html
    assert "Last hour" in html and "Last 24 hours" in html
    assert "100.0 %" in html  # one failed of one finished job in the last hour
    # Latest failures with error codes and a retry button.
    assert str(job.pk) in html
    assert "authorization_expired" in html
    assert reverse("admin:autopay-dashboard-retry", args=[job.pk]) in html
    assert "csrfmiddlewaretoken" in html
    # Volume and success rate per day and per service (staff see every user's payments).
    today = timezone.localdate().isoformat()
    assert re.search(
        rf'id="day-{today}">\s*<td>{today}</td>\s*<td class="number">3</td>\s*'
        r'<td class="number">2</td>\s*<td class="number">1018.750000 USDC</td>\s*'
        r'<td class="number">43.100000 USDC</td>\s*<td class="number">60.0 %</td>',
        html,
    )
    # One money format: the token's decimals and its symbol.
    assert "1119.500001 USDC" in html
    assert "Alpha" in html and "Beta" in html and "Gamma" in html
    assert "119.750001 USDC" in html and "33.3 %" in html


def test_admin_index_links_to_the_dashboard(staff_client: Client) -> None:
    response = staff_client.get("/admin/")
    assert response.status_code == 200
    assert f'href="{DASHBOARD_URL}"' in response.content.decode()


def test_non_staff_is_sent_to_the_admin_login(client: Client, user: Any) -> None:
    client.force_login(user)
    response = client.get(DASHBOARD_URL)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_anonymous_is_sent_to_the_admin_login(client: Client) -> None:
    response = client.get(DASHBOARD_URL)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next={DASHBOARD_URL}"


def test_non_staff_cannot_retry(client: Client, user: Any) -> None:
    job = failed_job(SubscriptionFactory.create(owner=user))
    client.force_login(user)
    response = client.post(reverse("admin:autopay-dashboard-retry", args=[job.pk]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert Job.objects.count() == 1


def test_retry_button_creates_a_new_job(
    staff_client: Client,
    user: Any,
    clean_redis: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    job = failed_job(SubscriptionFactory.create(owner=user))
    page = staff_client.get(DASHBOARD_URL).content.decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            reverse("admin:autopay-dashboard-retry", args=[job.pk]),
            {"csrfmiddlewaretoken": match.group(1)},
        )

    assert response.status_code == 302
    assert response["Location"] == DASHBOARD_URL
    new_job = Job.objects.exclude(pk=job.pk).get()
    assert new_job.payment_id == job.payment_id
    assert new_job.source == Job.Source.RETRY
    assert new_job.status == Job.Status.WAITING
    job.payment.refresh_from_db()
    assert job.payment.status == Payment.Status.PENDING
    # The new job was published to the broker after commit.
    assert clean_redis.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 1
    followed = staff_client.get(DASHBOARD_URL).content.decode()
    assert f"retried as job {new_job.pk}" in followed
    # Its payment is in flight now: no second retry button for the old job.
    assert reverse("admin:autopay-dashboard-retry", args=[job.pk]) not in followed


def test_retry_without_csrf_token_is_refused(staff_client: Client, user: Any) -> None:
    job = failed_job(SubscriptionFactory.create(owner=user))
    response = staff_client.post(reverse("admin:autopay-dashboard-retry", args=[job.pk]))
    assert response.status_code == 403
    assert Job.objects.count() == 1


def test_retry_of_a_paid_payment_is_explained(
    staff_client: Client, user: Any, clean_redis: Any
) -> None:
    job = failed_job(SubscriptionFactory.create(owner=user))
    Payment.objects.filter(pk=job.payment_id).update(status=Payment.Status.COMPLETED)
    staff_client.get(DASHBOARD_URL)
    token = staff_client.cookies[settings.CSRF_COOKIE_NAME].value

    response = staff_client.post(
        reverse("admin:autopay-dashboard-retry", args=[job.pk]), {"csrfmiddlewaretoken": token}
    )

    assert response.status_code == 302
    assert Job.objects.count() == 1
    followed = staff_client.get(DASHBOARD_URL).content.decode()
    assert "was not retried" in followed and "already completed" in followed


def test_retry_view_refuses_get(staff_client: Client, user: Any) -> None:
    job = failed_job(SubscriptionFactory.create(owner=user))
    response = staff_client.get(reverse("admin:autopay-dashboard-retry", args=[job.pk]))
    assert response.status_code == 405
    assert Job.objects.count() == 1
