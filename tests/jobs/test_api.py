"""Job endpoints: the baseline's exact shapes, ownership, filters, statistics, retry."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.pagination import PageNumberPagination
from rest_framework.test import APIClient

from jobs import services as job_services
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions import services
from subscriptions.models import Payment, Subscription
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

BASELINE_DATA_KEYS = {"subscriptionId", "userAddress", "amount", "recipientAddress", "serviceName"}


def assert_error(response: Any, http_status: int) -> dict[str, Any]:
    assert response.status_code == http_status, response.content
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["error"], str)
    assert body["error"].strip()
    return body


def triggered(owner: Any, **fields: Any) -> Job:
    fields.setdefault("amount", Decimal("10.5"))
    fields.setdefault("service_name", "Streaming Plus")
    return payment_trigger(subscription=SubscriptionFactory.create(owner=owner, **fields))


def finish(job: Job, *, status: str, result: dict[str, Any] | None = None) -> Job:
    """Move a job to a final state the way a worker does (claim, then complete or fail)."""
    claimed = job_services.job_claim(job_id=job.pk, worker_id="test-worker")
    assert claimed is not None
    if status == Job.Status.COMPLETED:
        assert job_services.job_complete(job=claimed, worker_id="test-worker", result=result or {})
    else:
        assert job_services.job_fail(
            job=claimed, worker_id="test-worker", code="rpc_timeout", message="RPC timed out"
        )
        Payment.objects.filter(pk=job.payment_id).update(status=Payment.Status.FAILED)
    claimed.refresh_from_db()
    return claimed


# --- GET /api/jobs/{jobId} ---------------------------------------------------------------------


def test_job_status_has_the_baseline_shape(api: APIClient, user: Any) -> None:
    job = triggered(user)
    subscription = job.subscription

    response = api.get(f"/api/jobs/{job.pk}")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert {"status", "progress", "result", "attemptsMade", "data"} <= set(data)
    assert data["status"] == "waiting"
    assert data["progress"] == 0
    assert data["result"] is None
    assert data["attemptsMade"] == 0
    assert data["jobId"] == str(job.pk)
    job_input = data["data"]
    assert set(job_input) >= BASELINE_DATA_KEYS
    assert job_input["subscriptionId"] == str(subscription.pk)
    assert job_input["userAddress"] == subscription.payer_address
    assert job_input["amount"] == "10.5"
    assert job_input["recipientAddress"] == subscription.recipient_address
    assert job_input["serviceName"] == "Streaming Plus"
    assert all(isinstance(job_input[key], str) for key in BASELINE_DATA_KEYS)


def test_job_status_answers_with_and_without_trailing_slash(api: APIClient, user: Any) -> None:
    job = triggered(user)
    assert api.get(f"/api/jobs/{job.pk}").json() == api.get(f"/api/jobs/{job.pk}/").json()


def test_completed_job_carries_the_baseline_result(api: APIClient, user: Any) -> None:
    job = triggered(user)
    transaction_hash = "0x" + "ab" * 32
    finish(
        job,
        status=Job.Status.COMPLETED,
        result={
            "success": True,
            "transactionHash": transaction_hash,
            "subscriptionId": str(job.subscription_id),
            "amount": "10.5",
        },
    )

    data = api.get(f"/api/jobs/{job.pk}").json()["data"]

    assert data["status"] == "completed"
    assert data["progress"] == 100
    assert data["attemptsMade"] == 1
    assert data["result"] == {
        "success": True,
        "transactionHash": transaction_hash,
        "subscriptionId": str(job.subscription_id),
        "amount": "10.5",
    }
    assert parse_datetime(data["finishedAt"]) is not None


def test_failed_job_reports_its_error(api: APIClient, user: Any) -> None:
    job = finish(triggered(user), status=Job.Status.FAILED)
    data = api.get(f"/api/jobs/{job.pk}").json()["data"]
    assert data["status"] == "failed"
    assert data["errorCode"] == "rpc_timeout"
    assert data["result"]["success"] is False


@pytest.mark.parametrize("job_id", ["not-a-uuid", "123", "0x1234", str(uuid.uuid4())])
def test_unknown_or_malformed_job_id_is_a_json_404(api: APIClient, job_id: str) -> None:
    assert assert_error(api.get(f"/api/jobs/{job_id}"), 404)["error"] == "Job not found."


def test_other_users_job_is_not_found(api: APIClient, other_user: Any) -> None:
    job = triggered(other_user)
    assert assert_error(api.get(f"/api/jobs/{job.pk}"), 404) == {
        "success": False,
        "error": "Job not found.",
    }


def test_staff_sees_any_job(staff_api: APIClient, other_user: Any) -> None:
    job = triggered(other_user)
    assert staff_api.get(f"/api/jobs/{job.pk}").json()["data"]["jobId"] == str(job.pk)


# --- GET /api/jobs/subscription/{subscriptionId} -----------------------------------------------


def test_jobs_of_a_subscription_have_the_baseline_shape_newest_first(
    api: APIClient, user: Any
) -> None:
    first = finish(triggered(user), status=Job.Status.FAILED)
    second = job_services.job_retry(job=first)
    unrelated = triggered(user)

    response = api.get(f"/api/jobs/subscription/{first.subscription_id}")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"success", "data"}
    assert body["success"] is True
    assert [row["jobId"] for row in body["data"]] == [str(second.pk), str(first.pk)]
    assert str(unrelated.pk) not in [row["jobId"] for row in body["data"]]
    for row in body["data"]:
        assert {"jobId", "status", "progress", "result", "createdAt"} <= set(row)
        assert isinstance(row["jobId"], str)
        assert parse_datetime(row["createdAt"]) is not None
    assert [row["status"] for row in body["data"]] == ["waiting", "failed"]
    assert body["data"][0]["result"] is None


def test_jobs_of_a_subscription_without_jobs_is_an_empty_list(api: APIClient, user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    assert api.get(f"/api/jobs/subscription/{subscription.pk}").json() == {
        "success": True,
        "data": [],
    }


@pytest.mark.parametrize("subscription_id", ["abc", "999999", "-1"])
def test_jobs_of_an_unknown_subscription_is_a_json_404(
    api: APIClient, subscription_id: str
) -> None:
    assert_error(api.get(f"/api/jobs/subscription/{subscription_id}"), 404)


def test_jobs_of_another_users_subscription_is_a_404(api: APIClient, other_user: Any) -> None:
    job = triggered(other_user)
    body = assert_error(api.get(f"/api/jobs/subscription/{job.subscription_id}"), 404)
    assert str(job.pk) not in str(body)


# --- GET /api/jobs/?status=&subscription= ------------------------------------------------------


def test_job_list_filters_by_status_and_subscription(api: APIClient, user: Any) -> None:
    failed = finish(triggered(user), status=Job.Status.FAILED)
    waiting = triggered(user)
    other_subscription_job = triggered(user)

    everything = api.get("/api/jobs/").json()
    assert {"count", "next", "previous", "results"} <= set(everything)
    assert everything["count"] == 3

    only_failed = api.get("/api/jobs/?status=failed").json()
    assert [row["jobId"] for row in only_failed["results"]] == [str(failed.pk)]

    by_subscription = api.get(f"/api/jobs/?subscription={waiting.subscription_id}").json()
    assert [row["jobId"] for row in by_subscription["results"]] == [str(waiting.pk)]

    both = api.get(f"/api/jobs/?status=failed&subscription={waiting.subscription_id}").json()
    assert both["count"] == 0
    assert both["results"] == []
    assert other_subscription_job.subscription_id != waiting.subscription_id


def test_job_list_is_paginated(api: APIClient, user: Any) -> None:
    page_size = PageNumberPagination.page_size
    assert page_size
    subscription = SubscriptionFactory.create(owner=user)
    payments = Payment.objects.bulk_create(
        services.payment_build(subscription=subscription, index=index)
        for index in range(page_size + 1)
    )
    Job.objects.bulk_create(
        Job(subscription=subscription, payment=payment, status=Job.Status.FAILED)
        for payment in payments
    )

    first = api.get("/api/jobs/?status=failed").json()

    assert first["count"] == page_size + 1
    assert len(first["results"]) == page_size
    assert first["previous"] is None
    assert first["next"]
    second = api.get(first["next"]).json()
    assert len(second["results"]) == 1
    assert second["next"] is None
    seen = {row["jobId"] for row in first["results"]} | {row["jobId"] for row in second["results"]}
    assert len(seen) == page_size + 1


def test_job_list_hides_other_users_jobs(api: APIClient, user: Any, other_user: Any) -> None:
    own = triggered(user)
    theirs = triggered(other_user)

    rows = api.get("/api/jobs/").json()["results"]
    assert [row["jobId"] for row in rows] == [str(own.pk)]
    filtered = api.get(f"/api/jobs/?subscription={theirs.subscription_id}").json()
    assert filtered["results"] == []


@pytest.mark.parametrize(
    "query", ["status=done", "status=FAILED", "subscription=abc", "subscription=-1"]
)
def test_job_list_refuses_unknown_filters_values(api: APIClient, query: str) -> None:
    assert_error(api.get(f"/api/jobs/?{query}"), 400)


# --- GET /api/jobs/stats -----------------------------------------------------------------------


def test_stats_count_by_status_and_report_the_queue_length(
    api: APIClient, staff_api: APIClient, user: Any, other_user: Any, clean_redis: Any
) -> None:
    finish(triggered(user), status=Job.Status.FAILED)
    finish(triggered(user), status=Job.Status.COMPLETED, result={"success": True})
    triggered(user)
    triggered(other_user)
    # Two messages waiting in the broker's queue (no worker runs in these tests).
    clean_redis.rpush(settings.CELERY_TASK_DEFAULT_QUEUE, "message-1", "message-2")

    response = api.get("/api/jobs/stats")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True
    stats = body["data"]
    assert stats["counts"] == {
        "waiting": 1,
        "active": 0,
        "completed": 1,
        "failed": 1,
        "delayed": 0,
    }
    assert stats["total"] == 3
    # The broker's queue holds every user's work: its length is for staff only.
    assert stats["queueLength"] is None
    assert staff_api.get("/api/jobs/stats").json()["data"]["queueLength"] == 2
    assert stats["finished"]["lastHour"] == {"completed": 1, "failed": 1, "failureRate": 0.5}
    assert parse_datetime(stats["oldestWaitingAt"]) is not None


def test_stats_with_an_empty_queue(staff_api: APIClient, clean_redis: Any) -> None:
    stats = staff_api.get("/api/jobs/stats/").json()["data"]
    assert stats["queueLength"] == 0
    assert stats["total"] == 0
    assert stats["oldestWaitingAt"] is None


def test_staff_stats_count_everyone(staff_api: APIClient, user: Any, other_user: Any) -> None:
    triggered(user)
    triggered(other_user)
    assert staff_api.get("/api/jobs/stats").json()["data"]["counts"]["waiting"] == 2


# --- POST /api/jobs/{jobId}/retry --------------------------------------------------------------


def test_retry_of_a_failed_job_creates_a_new_job_on_the_same_payment(
    api: APIClient, user: Any
) -> None:
    failed = finish(triggered(user), status=Job.Status.FAILED)

    response = api.post(f"/api/jobs/{failed.pk}/retry")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True
    new_job = Job.objects.get(pk=body["data"]["jobId"])
    assert body["data"]["subscriptionId"] == str(failed.subscription_id)
    assert new_job.pk != failed.pk
    assert new_job.payment_id == failed.payment_id
    assert new_job.status == Job.Status.WAITING
    assert new_job.source == Job.Source.RETRY
    assert Payment.objects.get(pk=failed.payment_id).status == Payment.Status.PENDING


def test_retry_of_an_open_job_is_a_conflict(api: APIClient, user: Any) -> None:
    job = triggered(user)
    assert_error(api.post(f"/api/jobs/{job.pk}/retry"), 409)
    assert Job.objects.count() == 1


def test_retry_of_another_users_job_is_a_404(api: APIClient, other_user: Any) -> None:
    failed = finish(triggered(other_user), status=Job.Status.FAILED)
    assert_error(api.post(f"/api/jobs/{failed.pk}/retry"), 404)
    assert Job.objects.count() == 1


def test_retry_when_the_payment_was_paid_meanwhile_is_a_conflict(api: APIClient, user: Any) -> None:
    failed = finish(triggered(user), status=Job.Status.FAILED)
    Payment.objects.filter(pk=failed.payment_id).update(
        status=Payment.Status.COMPLETED, completed_at=timezone.now() - timedelta(minutes=1)
    )
    assert_error(api.post(f"/api/jobs/{failed.pk}/retry"), 409)
    assert Job.objects.count() == 1


def test_jobs_endpoints_refuse_writes(api: APIClient, user: Any) -> None:
    job = triggered(user)
    assert_error(api.delete(f"/api/jobs/{job.pk}"), 405)
    assert_error(api.post("/api/jobs/", {}, format="json"), 405)
    assert Job.objects.filter(pk=job.pk).exists()
    assert Subscription.objects.count() == 1
