"""Prometheus metrics at GET /metrics, read from the database and Redis at scrape time.

Gunicorn runs several web processes and Celery several workers, so in-process counters would
each see a fraction of the truth. Instead a custom collector asks the durable stores on every
scrape: PostgreSQL for jobs and payments (the source of truth), Redis for the scan timings that
``record_scan`` accumulates from whichever beat or worker process ran the scan. No
prometheus_client multiprocess mode, no shared directory.

Access: ``Authorization: Bearer <METRICS_TOKEN>``; without a token it answers 403 unless
``METRICS_PUBLIC=true`` (a scraper on a private network).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from autopay.chain.client import rpc_calls_key
from autopay.chain.relayer import relayers_out_of_pool
from autopay.chain.status import networks_status
from autopay.funding import relayer_funding
from core.networks import network_registry
from core.redis import get_redis
from jobs.alerts import alerts_evaluate
from jobs.analytics import OPERATOR_SCOPE
from jobs.models import Job
from jobs.queue import broker_queue_length
from jobs.selectors import job_stats
from subscriptions.models import Payment
from subscriptions.webhooks.models import WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

# Upper bounds (seconds) of the settlement latency histogram: from instant-mining chains to a
# payment that waited out every retry backoff.
SETTLEMENT_LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)

# Redis keys written by record_scan. Shared by every process that can run a scan.
SCAN_SECONDS_SUM_KEY = "autopay:metrics:scan_seconds_sum"
SCAN_COUNT_KEY = "autopay:metrics:scan_count"
SCAN_LAST_SECONDS_KEY = "autopay:metrics:scan_last_seconds"
SCAN_LAST_FINISHED_KEY = "autopay:metrics:scan_last_finished"
SCAN_SUBSCRIPTIONS_KEY = "autopay:metrics:scan_subscriptions"
SCAN_JOBS_KEY = "autopay:metrics:scan_jobs"
SCAN_KEYS = (
    SCAN_SECONDS_SUM_KEY,
    SCAN_COUNT_KEY,
    SCAN_LAST_SECONDS_KEY,
    SCAN_LAST_FINISHED_KEY,
    SCAN_SUBSCRIPTIONS_KEY,
    SCAN_JOBS_KEY,
)


def record_scan(seconds: float, subscriptions: int, jobs: int) -> None:
    """Add one finished scan to the shared scan metrics (called by the scheduler).

    Never raises: losing a timing sample must not fail the scan that produced it.
    """
    try:
        client = get_redis(timeout=_redis_timeout())
        # MULTI/EXEC so that a scrape never sees a sum without its count.
        with client.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(SCAN_SECONDS_SUM_KEY, float(seconds))
            pipe.incr(SCAN_COUNT_KEY)
            pipe.set(SCAN_LAST_SECONDS_KEY, repr(float(seconds)))
            pipe.set(SCAN_LAST_FINISHED_KEY, repr(time.time()))
            pipe.incrby(SCAN_SUBSCRIPTIONS_KEY, int(subscriptions))
            pipe.incrby(SCAN_JOBS_KEY, int(jobs))
            pipe.execute()
    except Exception:
        # Any failure here (Redis down, bad URL, timeout) only costs a sample.
        logger.warning("metrics: recording a scan (%.3f s) failed", seconds, exc_info=True)


class AutopayCollector(Collector):
    """Builds every metric from PostgreSQL and Redis each time it is collected."""

    def collect(self) -> Iterable[Metric]:
        yield from _job_metrics()
        yield from _payment_metrics()
        yield from _settlement_latency()
        yield from _redis_metrics()
        yield from _alert_metrics()
        yield from _webhook_metrics()
        yield from _network_metrics()
        yield from _relayer_metrics()


def _alert_metrics() -> Iterator[Metric]:
    """Alert-ready gauges: the measured values, their thresholds and whether each fires."""
    stats = job_stats(user=OPERATOR_SCOPE)
    rate = GaugeMetricFamily(
        "autopay_job_failure_ratio",
        "Failed / finished jobs in a window (0 when none finished).",
        labels=["window"],
    )
    finished = GaugeMetricFamily(
        "autopay_jobs_finished_window", "Jobs finished in a window.", labels=["window"]
    )
    for key, window in (("lastHour", "1h"), ("lastDay", "24h")):
        figures = stats["finished"][key]
        rate.add_metric([window], float(figures["failureRate"]))
        finished.add_metric([window], int(figures["completed"]) + int(figures["failed"]))
    yield rate
    yield finished
    age = stats["oldestWaitingAgeSeconds"]
    yield GaugeMetricFamily(
        "autopay_oldest_waiting_job_age_seconds",
        "Age of the oldest waiting job (0 when none waits).",
        value=float(age or 0.0),
    )
    threshold = GaugeMetricFamily(
        "autopay_alert_threshold",
        "Threshold of each alert (AUTOPAY_ALERT_* settings).",
        labels=["alert"],
    )
    firing = GaugeMetricFamily(
        "autopay_alert_firing",
        "1 while the alert's value is beyond its threshold.",
        labels=["alert"],
    )
    for alert in alerts_evaluate(stats=stats):
        threshold.add_metric([alert.name], alert.threshold)
        firing.add_metric([alert.name], 1 if alert.firing else 0)
    yield threshold
    yield firing


def _webhook_metrics() -> Iterator[Metric]:
    counts = _counts_by(WebhookDelivery.objects.all(), "status")
    deliveries = GaugeMetricFamily(
        "autopay_webhook_deliveries", "Webhook deliveries by status.", labels=["status"]
    )
    for status in WebhookDelivery.Status.values:
        deliveries.add_metric([status], counts.get(status, 0))
    yield deliveries
    yield GaugeMetricFamily(
        "autopay_webhook_endpoints_disabled",
        "Webhook endpoints disabled (by their owner or after failing for days).",
        value=WebhookEndpoint.objects.filter(enabled=False).count(),
    )


def _job_metrics() -> Iterator[Metric]:
    counts = _counts_by(Job.objects.all(), "status")
    gauge = GaugeMetricFamily("autopay_jobs", "Jobs by status (jobs.Job rows).", labels=["status"])
    for status in Job.Status.values:
        gauge.add_metric([status], counts.pop(status, 0))
    for status, count in sorted(counts.items()):  # a status the model no longer lists
        gauge.add_metric([status], count)
    yield gauge


def _payment_metrics() -> Iterator[Metric]:
    counts = _counts_by(Payment.objects.all(), "status")
    payments = CounterMetricFamily(
        "autopay_payments",
        "Payments by status (subscriptions.Payment rows). Only completed is monotonic: a failed "
        "payment becomes pending again when retried.",
        labels=["status"],
    )
    for status in Payment.Status.values:
        payments.add_metric([status], counts.pop(status, 0))
    for status, count in sorted(counts.items()):
        payments.add_metric([status], count)
    yield payments

    failed = _counts_by(Payment.objects.filter(status=Payment.Status.FAILED), "error_code")
    by_code = CounterMetricFamily(
        "autopay_payments_failed",
        "Failed payments by error code (empty codes are reported as 'unknown').",
        labels=["error_code"],
    )
    merged: dict[str, int] = {}
    for code, count in failed.items():
        label = code or "unknown"
        merged[label] = merged.get(label, 0) + count
    for label, count in sorted(merged.items()):
        by_code.add_metric([label], count)
    yield by_code


def _network_metrics() -> Iterator[Metric]:
    """Per network: is its RPC answering, its head block, and its payments by status."""
    up = GaugeMetricFamily(
        "autopay_network_up", "1 when the network's RPC answers.", labels=["network"]
    )
    head = GaugeMetricFamily(
        "autopay_network_head_block", "The network's latest block.", labels=["network"]
    )
    for name, status in networks_status().items():
        up.add_metric([name], 1 if status.reachable else 0)
        if status.block_number is not None:
            head.add_metric([name], status.block_number)
    yield up
    yield head
    payments = GaugeMetricFamily(
        "autopay_network_payments",
        "Payments by network and status (subscriptions.Payment rows).",
        labels=["network", "status"],
    )
    rows = Payment.objects.values_list("network", "status").annotate(n=Count("id")).order_by()
    for network, status, count in rows:
        payments.add_metric([network, status], count)
    yield payments
    yield from _rpc_metrics()


def _rpc_metrics() -> Iterator[Metric]:
    """Every JSON-RPC request the engine sent to each network, by method (counted in Redis by
    every worker), and each network's budget: what a rate-limited provider bills and caps."""
    requests = CounterMetricFamily(
        "autopay_rpc_requests",
        "JSON-RPC requests sent to the network's provider, by method (all workers).",
        labels=["network", "method"],
    )
    budget = GaugeMetricFamily(
        "autopay_rpc_budget_per_second",
        "The network's max_rpc_per_second (0: no limit).",
        labels=["network"],
    )
    try:
        client = get_redis(timeout=1.0)
        for name, config in network_registry().items():
            budget.add_metric([name], config.max_rpc_per_second)
            for method, count in client.hgetall(rpc_calls_key(name)).items():
                requests.add_metric([name, method.decode()], int(count))
    except Exception:
        logger.warning("metrics: RPC counts unavailable", exc_info=True)
        return
    yield requests
    yield budget


def _settlement_latency() -> Iterator[Metric]:
    """Histogram of completed_at - created_at over completed payments, in one query."""
    latency = ExpressionWrapper(F("completed_at") - F("created_at"), output_field=DurationField())
    aggregates: dict[str, Any] = {"total": Count("pk"), "latency_sum": Sum("latency")}
    for index, bound in enumerate(SETTLEMENT_LATENCY_BUCKETS):
        aggregates[f"le_{index}"] = Count("pk", filter=Q(latency__lte=timedelta(seconds=bound)))
    row = (
        Payment.objects.filter(status=Payment.Status.COMPLETED, completed_at__isnull=False)
        .annotate(latency=latency)
        .aggregate(**aggregates)
    )
    total = int(row["total"] or 0)
    buckets: list[tuple[str, float]] = [
        (floatToGoString(bound), int(row[f"le_{index}"] or 0))
        for index, bound in enumerate(SETTLEMENT_LATENCY_BUCKETS)
    ]
    buckets.append(("+Inf", total))
    yield HistogramMetricFamily(
        "autopay_settlement_latency_seconds",
        "Seconds from a payment's creation to its recorded settlement (completed payments).",
        buckets=buckets,
        sum_value=_seconds(row["latency_sum"]),
    )


def _redis_metrics() -> Iterator[Metric]:
    """Scan timings and queue length; skipped (with redis_up 0) when Redis does not answer."""
    try:
        client = get_redis(timeout=_redis_timeout())
        values = client.mget(SCAN_KEYS)
        queue_length = broker_queue_length(timeout=_redis_timeout())
    except Exception:
        logger.warning("metrics: Redis unavailable; scan and queue metrics skipped", exc_info=True)
        yield _redis_up(0)
        return
    yield _redis_up(1)

    seconds_sum, count, last_seconds, last_finished, subscriptions, jobs = (
        _number(value) for value in values
    )
    yield SummaryMetricFamily(
        "autopay_scan_duration_seconds",
        "Duration of due-payment scans (all processes).",
        count_value=int(count or 0),
        sum_value=seconds_sum or 0.0,
    )
    if last_seconds is not None:
        yield GaugeMetricFamily(
            "autopay_scan_last_duration_seconds",
            "Duration of the most recent scan.",
            value=last_seconds,
        )
    if last_finished is not None:
        yield GaugeMetricFamily(
            "autopay_scan_last_finished_timestamp_seconds",
            "Unix time at which the most recent scan finished (alert when it grows old).",
            value=last_finished,
        )
    yield CounterMetricFamily(
        "autopay_scan_subscriptions",
        "Due subscriptions visited by scans.",
        value=int(subscriptions or 0),
    )
    yield CounterMetricFamily("autopay_scan_jobs", "Jobs created by scans.", value=int(jobs or 0))
    if queue_length is not None:
        yield GaugeMetricFamily(
            "autopay_queue_length",
            "Messages waiting in the Celery queue on the broker.",
            value=queue_length,
        )


def _relayer_metrics() -> Iterator[Metric]:
    """Each relayer's ETH balance (when the chain answers) and the /health threshold."""
    try:
        funding = relayer_funding()
    except Exception:
        logger.warning("metrics: relayer balances unavailable", exc_info=True)
        return
    if not funding:
        return
    balances = GaugeMetricFamily(
        "autopay_relayer_balance_eth",
        "ETH held by each relayer wallet (pays the gas of settlements).",
        labels=["relayer"],
    )
    for relayer in funding:
        if relayer.balance_eth is not None:
            balances.add_metric([relayer.address], float(relayer.balance_eth))
    yield balances
    out = relayers_out_of_pool(settings.CHAIN_NETWORK, [relayer.address for relayer in funding])
    in_pool = GaugeMetricFamily(
        "autopay_relayer_in_pool",
        "1 while a relayer takes work, 0 while it is out of the pool (unfunded).",
        labels=["relayer"],
    )
    for relayer in funding:
        in_pool.add_metric([relayer.address], 0.0 if relayer.address in out else 1.0)
    yield in_pool
    yield GaugeMetricFamily(
        "autopay_relayer_min_balance_eth",
        "RELAYER_MIN_BALANCE_ETH: below it /health answers 503.",
        value=float(settings.RELAYER_MIN_BALANCE_ETH),
    )


def _redis_up(value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "autopay_redis_up", "1 when Redis answered this scrape, 0 otherwise.", value=value
    )


def _counts_by(queryset: Any, field: str) -> dict[str, int]:
    rows = queryset.order_by().values(field).annotate(count=Count("pk"))
    return {str(row[field]): int(row["count"]) for row in rows}


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _number(value: bytes | str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _redis_timeout() -> float:
    return float(getattr(settings, "AUTOPAY_HEALTH_TIMEOUT_SECONDS", 2.0))


registry = CollectorRegistry(auto_describe=False)
registry.register(AutopayCollector())


def metrics_token() -> str:
    """The bearer token that guards /metrics; empty means closed unless METRICS_PUBLIC.

    Read from settings, and from the environment when settings does not define it, so that a
    token set in the environment is never silently ignored (which would leave /metrics open).
    """
    token = getattr(settings, "METRICS_TOKEN", None)
    if token is None:
        token = os.environ.get("METRICS_TOKEN", "")
    return str(token or "")


def _authorized(request: HttpRequest, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() != "bearer" or not supplied.strip():
        return False
    return hmac.compare_digest(supplied.strip().encode(), token.encode())


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition of the engine's metrics."""
    token = metrics_token()
    if not token and not getattr(settings, "METRICS_PUBLIC", False):
        # Closed by default: the figures tell anyone how much money moves and for whom.
        return HttpResponse(
            "Forbidden: set METRICS_TOKEN (or METRICS_PUBLIC=true on a private network)\n",
            status=403,
            content_type="text/plain",
        )
    if token and not _authorized(request, token):
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


# Mounted by config/urls.py with path("metrics", include("autopay.metrics")): GET /metrics.
urlpatterns = [path("", metrics_view, name="metrics")]
