"""Alerts on the queue's health: a failure rate and a queue age above their thresholds.

Shown on the operator dashboard and exported to Prometheus (``autopay_alert_firing``, with the
measured values and thresholds as gauges), so that an alerting rule can be written either on
the firing flag or on the values. Thresholds come from settings (README, "Configuration").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

FAILURE_RATE = "job_failure_rate"
QUEUE_AGE = "queue_age"


@dataclass(frozen=True)
class Alert:
    name: str
    firing: bool
    value: float | None
    threshold: float
    message: str


def alerts_evaluate(*, stats: dict[str, Any]) -> list[Alert]:
    """The alerts for ``jobs.selectors.job_stats`` figures (every user's, for operators)."""
    last_hour = stats["finished"]["lastHour"]
    finished = int(last_hour["completed"]) + int(last_hour["failed"])
    rate = float(last_hour["failureRate"])
    rate_threshold = float(settings.AUTOPAY_ALERT_FAILURE_RATE)
    minimum = int(settings.AUTOPAY_ALERT_MIN_FINISHED_JOBS)
    rate_firing = finished >= minimum and rate > rate_threshold
    age = stats["oldestWaitingAgeSeconds"]
    age_threshold = float(settings.AUTOPAY_ALERT_QUEUE_AGE_SECONDS)
    age_firing = age is not None and float(age) > age_threshold
    return [
        Alert(
            FAILURE_RATE,
            rate_firing,
            rate,
            rate_threshold,
            f"{rate * 100:.1f} % of the {finished} jobs finished in the last hour failed "
            f"(alert above {rate_threshold * 100:.1f} % once at least {minimum} finished).",
        ),
        Alert(
            QUEUE_AGE,
            age_firing,
            None if age is None else float(age),
            age_threshold,
            (
                "No job is waiting."
                if age is None
                else f"The oldest waiting job has waited {float(age):.0f} s "
                f"(alert above {age_threshold:.0f} s): are the workers running?"
            ),
        ),
    ]
