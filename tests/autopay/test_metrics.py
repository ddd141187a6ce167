"""GET /metrics against real PostgreSQL and Redis: every figure matches the rows it counts."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from autopay import metrics
from jobs.models import Job
from jobs.services import job_create
from subscriptions.models import Payment, Subscription
from subscriptions.services import payment_build
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _metrics_public(settings: Any) -> None:
    # These tests read the figures; access rules are tested below and in test_permissions.py.
    settings.METRICS_PUBLIC = True


def scrape(client: Client, **headers: str) -> list[Sample]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    families = text_string_to_metric_families(response.content.decode())
    return [sample for family in families for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    matches = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples"
    return matches[0]


def names(samples: list[Sample]) -> set[str]:
    return {sample.name for sample in samples}


def make_payment(
    subscription: Subscription,
    index: int,
    *,
    status: str = Payment.Status.PENDING,
    error_code: str = "",
    latency_seconds: float | None = None,
) -> Payment:
    payment = payment_build(subscription=subscription, index=index)
    payment.status = status
    payment.error_code = error_code
    payment.save()
    if latency_seconds is not None:
        created = timezone.now() - timedelta(hours=1)
        Payment.objects.filter(pk=payment.pk).update(
            created_at=created, completed_at=created + timedelta(seconds=latency_seconds)
        )
    return payment


@pytest.fixture
def rows(clean_redis: redis.Redis) -> dict[str, Any]:
    """Payments in every status (with error codes and latencies) and jobs in every status."""
    subscription: Subscription = SubscriptionFactory.create()
    latencies = [0.05, 0.3, 0.3, 1.5, 7.0, 45.0, 1_000.0]
    index = 0
    for latency in latencies:
        make_payment(subscription, index, status=Payment.Status.COMPLETED, latency_seconds=latency)
        index += 1
    for code in ["insufficient_balance", "insufficient_balance", "invalid_signature", ""]:
        make_payment(subscription, index, status=Payment.Status.FAILED, error_code=code)
        index += 1
    for status in [Payment.Status.PENDING, Payment.Status.PROCESSING, Payment.Status.SUBMITTED]:
        make_payment(subscription, index, status=status)
        index += 1

    job_statuses = ["waiting", "active", "active", "delayed", "completed", "failed", "failed"]
    for job_status, payment in zip(job_statuses, Payment.objects.order_by("pk"), strict=False):
        job = job_create(payment=payment, source=Job.Source.SCHEDULER, publish=False)
        Job.objects.filter(pk=job.pk).update(status=job_status)
    return {"latencies": latencies}


def test_job_and_payment_counts_match_rows(client: Client, rows: dict[str, Any]) -> None:
    samples = scrape(client)

    job_counts = Counter(Job.objects.values_list("status", flat=True))
    assert sum(job_counts.values()) == 7
    for status in Job.Status.values:
        assert value(samples, "autopay_jobs", status=status) == job_counts.get(status, 0)

    payment_counts = Counter(Payment.objects.values_list("status", flat=True))
    for status in Payment.Status.values:
        expected = payment_counts.get(status, 0)
        assert value(samples, "autopay_payments_total", status=status) == expected
    assert value(samples, "autopay_payments_total", status="completed") == 7

    assert value(samples, "autopay_payments_failed_total", error_code="insufficient_balance") == 2
    assert value(samples, "autopay_payments_failed_total", error_code="invalid_signature") == 1
    assert value(samples, "autopay_payments_failed_total", error_code="unknown") == 1


def test_settlement_latency_histogram_is_cumulative_over_completed_payments(
    client: Client, rows: dict[str, Any]
) -> None:
    samples = scrape(client)
    latencies = [
        (payment.completed_at - payment.created_at).total_seconds()
        for payment in Payment.objects.filter(status=Payment.Status.COMPLETED)
        if payment.completed_at is not None
    ]
    assert sorted(latencies) == pytest.approx(sorted(rows["latencies"]))

    name = "autopay_settlement_latency_seconds"
    for bound in metrics.SETTLEMENT_LATENCY_BUCKETS:
        le = str(float(bound))
        expected = sum(1 for latency in latencies if latency <= bound)
        assert value(samples, f"{name}_bucket", le=le) == expected, le
    assert value(samples, f"{name}_bucket", le="+Inf") == len(latencies)
    assert value(samples, f"{name}_count") == len(latencies)
    assert value(samples, f"{name}_sum") == pytest.approx(sum(latencies), abs=1e-3)
    # Spot checks of the cumulative shape: 0.05 | 0.3 0.3 | 1.5 | 7 | 45 | 1000.
    assert value(samples, f"{name}_bucket", le="0.25") == 1
    assert value(samples, f"{name}_bucket", le="0.5") == 3
    assert value(samples, f"{name}_bucket", le="300.0") == 6


def test_empty_database_exposes_zeroes(client: Client, clean_redis: redis.Redis) -> None:
    samples = scrape(client)
    for status in Job.Status.values:
        assert value(samples, "autopay_jobs", status=status) == 0
    assert value(samples, "autopay_settlement_latency_seconds_count") == 0
    assert value(samples, "autopay_settlement_latency_seconds_bucket", le="+Inf") == 0
    assert value(samples, "autopay_scan_duration_seconds_count") == 0
    assert "autopay_scan_last_duration_seconds" not in names(samples)
    assert value(samples, "autopay_queue_length") == 0
    assert value(samples, "autopay_redis_up") == 1


def test_record_scan_accumulates_in_redis_across_calls(
    client: Client, clean_redis: redis.Redis
) -> None:
    metrics.record_scan(0.5, subscriptions=10, jobs=4)
    metrics.record_scan(1.25, subscriptions=3, jobs=2)

    assert float(clean_redis.get(metrics.SCAN_SECONDS_SUM_KEY) or 0) == pytest.approx(1.75)
    assert int(clean_redis.get(metrics.SCAN_COUNT_KEY) or 0) == 2
    samples = scrape(client)
    assert value(samples, "autopay_scan_duration_seconds_count") == 2
    assert value(samples, "autopay_scan_duration_seconds_sum") == pytest.approx(1.75)
    assert value(samples, "autopay_scan_last_duration_seconds") == pytest.approx(1.25)
    assert value(samples, "autopay_scan_subscriptions_total") == 13
    assert value(samples, "autopay_scan_jobs_total") == 6
    finished = value(samples, "autopay_scan_last_finished_timestamp_seconds")
    assert abs(finished - timezone.now().timestamp()) < 60


def test_queue_length_counts_every_priority_list(client: Client, clean_redis: redis.Redis) -> None:
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    clean_redis.lpush(queue, "m1", "m2", "m3")
    clean_redis.lpush(f"{queue}\x06\x169", "urgent")
    assert value(scrape(client), "autopay_queue_length") == 4


def test_redis_failure_skips_redis_metrics_but_serves_the_rest(
    client: Client, rows: dict[str, Any], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real Redis address that nothing answers on, for the metrics and the broker alike.
    settings.REDIS_URL = settings.CELERY_BROKER_URL = UNREACHABLE_REDIS

    samples = scrape(client)

    assert value(samples, "autopay_redis_up") == 0
    assert value(samples, "autopay_jobs", status="active") == 2
    assert value(samples, "autopay_payments_total", status="completed") == 7
    assert not names(samples) & {
        "autopay_queue_length",
        "autopay_scan_duration_seconds_count",
        "autopay_scan_last_duration_seconds",
    }
    # The scan itself must not fail because its timing could not be stored.
    metrics.record_scan(0.1, subscriptions=1, jobs=1)


def test_closed_without_token_unless_public(
    client: Client, settings: Any, clean_redis: redis.Redis
) -> None:
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 200
    settings.METRICS_PUBLIC = False
    assert client.get("/metrics").status_code == 403


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Token metrics-secret", "Bearer", "metrics-secret"],
)
def test_token_required_when_configured(
    client: Client, settings: Any, authorization: str | None
) -> None:
    settings.METRICS_TOKEN = "metrics-secret"
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"autopay_" not in response.content


def test_bearer_token_grants_access(
    client: Client, settings: Any, clean_redis: redis.Redis
) -> None:
    settings.METRICS_TOKEN = "metrics-secret"
    samples = scrape(client, Authorization="Bearer metrics-secret")
    assert "autopay_jobs" in names(samples)


def test_token_from_environment_when_settings_lacks_it(
    client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch, clean_redis: redis.Redis
) -> None:
    # Until settings defines METRICS_TOKEN, a token in the environment must still close the door.
    if hasattr(settings, "METRICS_TOKEN"):
        del settings.METRICS_TOKEN
    monkeypatch.setenv("METRICS_TOKEN", "from-env")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_only_get_is_allowed(client: Client) -> None:
    assert client.post("/metrics").status_code == 405
