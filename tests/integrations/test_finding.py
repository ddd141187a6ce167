"""Finding things: FilterSets, ?search=, ?ordering= on every list, the same in the admin, and
CSV export of payments and jobs (API and admin action) with exact decimal amounts."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from jobs.models import Job
from subscriptions.models import Payment, Subscription
from subscriptions.services import payment_build
from tests.factories import SubscriptionFactory, failed_job


def _payment(subscription: Subscription, index: int, **fields: Any) -> Payment:
    payment = payment_build(subscription=subscription, index=index)
    for name, value in fields.items():
        setattr(payment, name, value)
    payment.save()
    return payment


def _csv(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    assert response.streaming
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def data(user: Any, other_user: Any) -> dict[str, Any]:
    now = timezone.now()
    gym = SubscriptionFactory.create(
        owner=user, service_name="Gym membership", amount=Decimal("49.999999")
    )
    news = SubscriptionFactory.create(
        owner=user,
        service_name="=HYPERLINK(news)",
        amount=Decimal("5"),
        status=Subscription.Status.PAST_DUE,
        network="eip155:8453",
    )
    theirs = SubscriptionFactory.create(owner=other_user, service_name="Gym membership")
    paid = _payment(
        gym,
        0,
        status=Payment.Status.COMPLETED,
        transaction_hash="0x" + "ab" * 32,
        completed_at=now - timedelta(days=2),
    )
    failed = _payment(news, 0, status=Payment.Status.FAILED, error_code="insufficient_balance")
    _payment(theirs, 0, status=Payment.Status.COMPLETED)
    job = failed_job(news, code="insufficient_balance")
    return {"gym": gym, "news": news, "theirs": theirs, "paid": paid, "failed": failed, "job": job}


def _ids(response: Any) -> list[Any]:
    assert response.status_code == 200, response.content
    return [row.get("id", row.get("jobId")) for row in response.json()["results"]]


def test_subscription_filters_search_and_ordering(api: APIClient, data: dict[str, Any]) -> None:
    gym, news = data["gym"], data["news"]
    assert _ids(api.get("/api/subscriptions/?status=past_due")) == [news.pk]
    assert _ids(api.get("/api/subscriptions/?status=past_due&status=active&ordering=id")) == [
        gym.pk,
        news.pk,
    ]
    assert _ids(api.get("/api/subscriptions/?service=gym")) == [gym.pk]
    assert _ids(api.get("/api/subscriptions/?network=eip155:8453")) == [news.pk]
    assert _ids(api.get("/api/subscriptions/?amount_min=10")) == [gym.pk]
    assert _ids(api.get("/api/subscriptions/?amount_max=5")) == [news.pk]
    assert _ids(api.get(f"/api/subscriptions/?search={gym.recipient_address.lower()}")) == [gym.pk]
    assert _ids(api.get("/api/subscriptions/?search=membership")) == [gym.pk]  # not theirs
    assert _ids(api.get("/api/subscriptions/?ordering=-amount")) == [gym.pk, news.pk]
    assert _ids(api.get("/api/subscriptions/?ordering=amount")) == [news.pk, gym.pk]
    future = (timezone.now() + timedelta(days=1)).isoformat()
    assert _ids(api.get("/api/subscriptions/", {"created_after": future})) == []


def test_payment_filters_and_search_by_transaction_hash(
    api: APIClient, data: dict[str, Any]
) -> None:
    paid, failed = data["paid"], data["failed"]
    assert _ids(api.get("/api/payments/?error_code=insufficient_balance")) == [failed.pk]
    assert _ids(api.get("/api/payments/?status=completed")) == [paid.pk]
    assert _ids(api.get("/api/payments/?search=" + "AB" * 8)) == [paid.pk]
    assert _ids(api.get("/api/payments/?search=gym")) == [paid.pk]
    assert _ids(api.get("/api/payments/?service=hyperlink")) == [failed.pk]
    assert _ids(api.get("/api/payments/?amount_min=49.999999&amount_max=49.999999")) == [paid.pk]
    week_ago = (timezone.now() - timedelta(days=7)).isoformat()
    yesterday = (timezone.now() - timedelta(days=1)).isoformat()
    assert _ids(
        api.get("/api/payments/", {"completed_after": week_ago, "completed_before": yesterday})
    ) == [paid.pk]
    assert _ids(api.get("/api/payments/?ordering=amount")) == [failed.pk, paid.pk]


def test_job_filters_search_and_ordering(api: APIClient, data: dict[str, Any]) -> None:
    job = data["job"]
    assert _ids(api.get("/api/jobs/?error_code=insufficient_balance")) == [str(job.pk)]
    assert _ids(api.get("/api/jobs/?status=failed&status=waiting")) == [str(job.pk)]
    assert _ids(api.get("/api/jobs/?status=completed")) == []
    assert _ids(api.get("/api/jobs/?service=hyperlink&network=eip155:8453")) == [str(job.pk)]
    assert _ids(api.get("/api/jobs/?search=gym")) == []
    assert _ids(api.get(f"/api/jobs/?payment={job.payment_id}&ordering=-finished_at")) == [
        str(job.pk)
    ]


@pytest.mark.parametrize(
    "query",
    [
        "/api/payments/?amount_min=lots",
        "/api/payments/?amount_min=NaN",
        "/api/payments/?status=lost",
        "/api/subscriptions/?created_after=yesterday",
        "/api/jobs/?finished_before=2024-13-45",
        "/api/jobs/?payment=-3",
    ],
)
def test_bad_filter_values_answer_400_in_the_envelope(
    api: APIClient, data: dict[str, Any], query: str
) -> None:
    # Payments and jobs export CSV: a bad filter on a CSV request answers JSON too.
    suffixes = ("",) if "subscriptions" in query else ("", "&format=csv")
    for suffix in suffixes:
        response = api.get(query + suffix)
        assert response.status_code == 400, response.content
        assert response["Content-Type"].startswith("application/json")
        assert response.json()["success"] is False


def test_payments_csv_is_exact_filtered_scoped_and_safe(
    api: APIClient, data: dict[str, Any]
) -> None:
    rows = _csv(api.get("/api/payments/?format=csv&ordering=id"))
    # Only the caller's payments, every one (no pages), amounts exact.
    assert [int(row["id"]) for row in rows] == [data["paid"].pk, data["failed"].pk]
    assert rows[0]["amount"] == "49.999999"
    assert rows[0]["transaction_hash"] == "0x" + "ab" * 32
    assert rows[0]["completed_at"].endswith("+00:00")
    # A text cell that a spreadsheet would run as a formula is defused.
    assert rows[1]["service_name"] == "'=HYPERLINK(news)"
    assert rows[1]["amount"] == "5"
    # Accept: text/csv asks for the same; filters apply.
    filtered = _csv(api.get("/api/payments/?status=failed", HTTP_ACCEPT="text/csv"))
    assert [int(row["id"]) for row in filtered] == [data["failed"].pk]


def test_jobs_csv(api: APIClient, staff_api: APIClient, data: dict[str, Any]) -> None:
    rows = _csv(api.get("/api/jobs/?format=csv"))
    assert [row["job_id"] for row in rows] == [str(data["job"].pk)]
    assert rows[0]["error_code"] == "insufficient_balance"
    assert rows[0]["amount"] == "5"
    assert len(_csv(staff_api.get("/api/jobs/", HTTP_ACCEPT="text/csv"))) == Job.objects.count()


def test_csv_is_only_for_lists(api: APIClient, data: dict[str, Any]) -> None:
    response = api.get(f"/api/payments/{data['paid'].pk}/?format=csv")
    assert response.status_code == 404
    assert response.json()["success"] is False


def test_admin_filters_search_and_csv_action(
    client: Any, staff_user: Any, data: dict[str, Any]
) -> None:
    client.force_login(staff_user)
    page = client.get("/admin/subscriptions/payment/?amount__gte=40&amount__lte=50")
    assert page.status_code == 200
    assert list(page.context["cl"].queryset) == [data["paid"]]
    assert b"amount (range)" in page.content.lower()
    searched = client.get("/admin/jobs/job/", {"q": "hyperlink"})
    assert list(searched.context["cl"].queryset) == [data["job"]]

    exported = client.post(
        "/admin/subscriptions/payment/",
        {
            "action": "export_csv",
            "_selected_action": [data["paid"].pk, data["failed"].pk],
            "index": 0,
        },
    )
    rows = _csv(exported)
    assert {row["amount"] for row in rows} == {"49.999999", "5"}
    jobs = _csv(
        client.post(
            "/admin/jobs/job/",
            {"action": "export_csv", "_selected_action": [data["job"].pk], "index": 0},
        )
    )
    assert [row["job_id"] for row in jobs] == [str(data["job"].pk)]


def test_times_are_compared_in_utc(api: APIClient, data: dict[str, Any]) -> None:
    """An offset PostgreSQL refuses (beyond ±15:59) is converted, not a 500; a time that does
    not exist in UTC is a 400."""
    for suffix in ("", "&format=csv"):
        ok = api.get("/api/payments/?created_before=2000-01-01T00:00:00%2B16:00" + suffix)
        assert ok.status_code == 200, ok.content
        bad = api.get("/api/jobs/?created_after=0001-01-01T00:00:00%2B01:00" + suffix)
        assert bad.status_code == 400, bad.content
