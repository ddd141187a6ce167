"""The attempts ledger: one row per attempt, appended at the claim and closed once; shown by the
job API (with milliseconds) and as a timeline on the admin's read-only job page."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Job, JobAttempt
from jobs.services import AttemptReport, payment_trigger
from subscriptions.models import Payment
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

MS_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


@pytest.fixture
def job(user: Any) -> Job:
    return payment_trigger(
        subscription=SubscriptionFactory.create(owner=user, amount=Decimal("12.5"))
    )


def _claim(job: Job, worker: str = "host:1:task") -> Job:
    claimed = services.job_claim(job_id=job.pk, worker_id=worker)
    assert claimed is not None
    return claimed


def test_a_claim_appends_a_running_attempt(job: Job) -> None:
    claimed = _claim(job)

    (attempt,) = JobAttempt.objects.filter(job=job)
    assert attempt.number == claimed.attempts_made == 1
    assert attempt.worker == "host:1:task"
    assert attempt.outcome == JobAttempt.Outcome.RUNNING
    assert attempt.finished_at is None


def test_a_losing_claim_appends_nothing(job: Job) -> None:
    _claim(job)
    assert services.job_claim(job_id=job.pk, worker_id="other:2:task") is None
    assert JobAttempt.objects.filter(job=job).count() == 1


def test_every_outcome_closes_its_attempt_once_with_what_it_did(job: Job) -> None:
    claimed = _claim(job)
    assert services.job_delay(
        job=claimed,
        worker_id="host:1:task",
        countdown=2,
        code="rpc_unavailable",
        message="chain RPC unavailable",
        report=AttemptReport(transaction_hashes=("0x" + "ab" * 32,)),
    )
    Job.objects.filter(pk=job.pk).update(next_attempt_at=timezone.now())
    second = _claim(job, "host:2:task")
    assert services.job_complete(
        job=second,
        worker_id="host:2:task",
        result={"success": True},
        report=AttemptReport(transaction_hashes=("0x" + "cd" * 32,), gas_used=70_000, fee_wei=7),
    )

    first, last = JobAttempt.objects.filter(job=job).order_by("started_at")
    assert (first.number, first.outcome, first.error_code) == (1, "retry", "rpc_unavailable")
    assert first.transaction_hashes == ["0x" + "ab" * 32]
    assert (last.number, last.outcome, last.error_code) == (2, "completed", "")
    assert (last.gas_used, last.fee_wei) == (70_000, Decimal(7))
    assert first.finished_at is not None and last.finished_at is not None
    assert first.finished_at <= last.started_at

    # Closed rows are never written again.
    closed = services.job_attempt_close(job=job, worker_id=None, outcome="failed", code="x")
    assert closed == 0
    assert JobAttempt.objects.get(pk=last.pk).outcome == "completed"


def test_a_failure_closes_the_attempt_as_failed(job: Job) -> None:
    claimed = _claim(job)
    services.job_fail(
        job=claimed, worker_id="host:1:task", code="insufficient_balance", message="too low"
    )
    (attempt,) = JobAttempt.objects.filter(job=job)
    assert (attempt.outcome, attempt.error_code, attempt.error_message) == (
        "failed",
        "insufficient_balance",
        "too low",
    )


def test_recovery_closes_a_dead_workers_attempt_with_its_broadcast(job: Job) -> None:
    _claim(job, "dead:1:task")
    tx_hash = "0x" + "ef" * 32
    Payment.objects.filter(pk=job.payment_id).update(
        status=Payment.Status.SUBMITTED, transaction_hash=tx_hash
    )
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    assert services.jobs_recover().leases_recovered == 1

    (attempt,) = JobAttempt.objects.filter(job=job)
    assert attempt.outcome == JobAttempt.Outcome.WORKER_LOST
    assert attempt.transaction_hashes == [tx_hash]
    assert attempt.finished_at is not None


def test_job_api_returns_the_attempts_with_milliseconds(
    job: Job, api: APIClient, staff_api: APIClient
) -> None:
    claimed = _claim(job)
    services.job_complete(
        job=claimed,
        worker_id="host:1:task",
        result={"success": True},
        report=AttemptReport(transaction_hashes=("0x" + "cd" * 32,), gas_used=70_000, fee_wei=7),
    )

    body = api.get(f"/api/jobs/{job.pk}").json()["data"]
    (attempt,) = body["attempts"]
    assert attempt["attempt"] == 1
    assert attempt["outcome"] == "completed"
    assert MS_TIMESTAMP.match(attempt["startedAt"]), attempt["startedAt"]
    assert MS_TIMESTAMP.match(attempt["finishedAt"]), attempt["finishedAt"]
    assert isinstance(attempt["durationMs"], int) and attempt["durationMs"] >= 0
    assert attempt["transactionHashes"] == ["0x" + "cd" * 32]
    assert (attempt["gasUsed"], attempt["feeWei"]) == (70_000, "7")
    assert attempt["worker"] is None, "integrators do not see our hosts"
    assert attempt["errorCode"] is None and attempt["error"] is None

    staff_view = staff_api.get(f"/api/jobs/{job.pk}").json()["data"]["attempts"][0]
    assert staff_view["worker"] == "host:1:task"


def test_a_job_without_attempts_has_an_empty_list(job: Job, api: APIClient) -> None:
    assert api.get(f"/api/jobs/{job.pk}").json()["data"]["attempts"] == []


# --- admin ---------------------------------------------------------------------------------


@pytest.fixture
def operator(client: Client, staff_user: Any) -> Client:
    client.force_login(staff_user)
    return client


def test_admin_job_page_is_read_only_with_the_attempts_timeline(job: Job, operator: Client) -> None:
    claimed = _claim(job)
    services.job_delay(
        job=claimed, worker_id="host:1:task", countdown=2, code="rpc_unavailable", message="down"
    )
    JobAttempt.objects.filter(job=job).update(
        started_at=timezone.now() - timedelta(seconds=10),
        finished_at=timezone.now() - timedelta(seconds=9, milliseconds=750),
    )

    content = operator.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()

    assert 'name="_save"' not in content and 'name="_continue"' not in content
    assert "attempt-timeline" in content
    assert "rpc_unavailable" in content
    assert "Transient error, retry scheduled" in content
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3}", content), "attempt times to the millisecond"
    assert "0.250 s" in content, "how long the attempt took"


def test_admin_timeline_shows_the_wait_between_attempts(job: Job, operator: Client) -> None:
    start = timezone.now() - timedelta(seconds=30)
    for number, (begin, end) in enumerate([(0.0, 0.1), (2.1, 2.2), (6.2, 6.3)], start=1):
        JobAttempt.objects.create(
            job=job,
            number=number,
            worker="w",
            outcome="retry",
            started_at=start + timedelta(seconds=begin),
            finished_at=start + timedelta(seconds=end),
        )
    content = operator.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "2.000 s" in content and "4.000 s" in content, "the 2 s and 4 s backoff"


def test_admin_payment_pages_are_read_only_with_token_decimals(job: Job, operator: Client) -> None:
    payment = Payment.objects.get(pk=job.payment_id)

    detail = operator.get(f"/admin/subscriptions/payment/{payment.pk}/change/").content.decode()
    listing = operator.get("/admin/subscriptions/payment/").content.decode()

    assert 'name="_save"' not in detail
    for content in (detail, listing):
        assert "12.500000" in content
        assert "12.500000000000000000" not in content


def test_admin_subscription_pages_show_token_decimals(job: Job, operator: Client) -> None:
    subscription_id = job.subscription_id
    listing = operator.get("/admin/subscriptions/subscription/").content.decode()
    change = operator.get(
        f"/admin/subscriptions/subscription/{subscription_id}/change/"
    ).content.decode()

    for content in (listing, change):
        assert "12.500000" in content
        assert "12.500000000000000000" not in content
    assert 'value="12.500000"' in change, "the amount field with the token's decimals"


def test_admin_times_are_shown_to_the_second(job: Job, operator: Client) -> None:
    listing = operator.get("/admin/jobs/job/").content.decode()
    created = timezone.localtime(Job.objects.get(pk=job.pk).created_at)
    assert created.strftime("%Y-%m-%d %H:%M:%S") in listing
