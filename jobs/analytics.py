"""Read-side analytics for operators and integrators: payment volume, success rate, failures.

Scoped like every other selector: staff see every subscription, other users only their own.

A payment counts on the day of its outcome: ``completed_at`` for a completed payment, and the
time its failure was recorded (its last update) for a failed one. A payment counts once, by its
current status: a payment that failed and then succeeded on a retry is a success. Job-level
failure rates (every attempt) are in ``jobs.selectors.job_stats``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import (
    BooleanField,
    Count,
    Exists,
    ExpressionWrapper,
    F,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Sum,
)
from django.db.models.functions import Coalesce, TruncDate, TruncMinute
from django.utils import timezone

from core.console import money_text
from jobs.models import Job
from jobs.selectors import job_list
from subscriptions.models import Payment
from subscriptions.selectors import payment_list

DEFAULT_DAYS = 14
MAX_DAYS = 366


class OperatorScope:
    """The ``user`` of a management command run by an operator: sees every subscription.

    Selectors only ask ``user.is_staff``; this avoids inventing a database user for the CLI.
    """

    is_staff = True
    is_superuser = True
    is_authenticated = True
    is_active = True


OPERATOR_SCOPE = OperatorScope()


def decimal_text(value: Decimal) -> str:
    """An exact amount as a plain string without trailing zeros ("12.5", "30", "0")."""
    return format(value.normalize(), "f")


def dashboard_money_text(value: Decimal) -> str:
    """A sum of the dashboard in the console's money format, with the default network's token
    decimals and symbol (the allow-list holds one stablecoin per network)."""
    return money_text(value, decimals=settings.TOKEN_DECIMALS, network=settings.CHAIN_NETWORK)


@dataclass(frozen=True)
class PaymentVolume:
    """Finished payments of one group (a day, a service, or everything)."""

    completed: int = 0
    failed: int = 0
    completed_amount: Decimal = Decimal("0")
    failed_amount: Decimal = Decimal("0")

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    @property
    def success_rate(self) -> float | None:
        """Completed / (completed + failed), or None when nothing finished."""
        if not self.finished:
            return None
        return round(self.completed / self.finished, 4)

    @property
    def completed_amount_text(self) -> str:
        return dashboard_money_text(self.completed_amount)

    @property
    def failed_amount_text(self) -> str:
        return dashboard_money_text(self.failed_amount)

    @property
    def success_percent(self) -> str:
        rate = self.success_rate
        return "-" if rate is None else f"{rate * 100:.1f} %"


@dataclass(frozen=True)
class DayVolume:
    day: date
    volume: PaymentVolume


@dataclass(frozen=True)
class ServiceVolume:
    service_name: str
    volume: PaymentVolume


@dataclass(frozen=True)
class PaymentAnalytics:
    days: int
    first_day: date
    last_day: date
    per_day: list[DayVolume]
    per_service: list[ServiceVolume]
    totals: PaymentVolume


def analytics_window(*, days: int, now: datetime | None = None) -> tuple[date, date]:
    """(first, last) day of a window of ``days`` days ending today, in the current timezone."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}")
    last_day = timezone.localdate(now or timezone.now())
    return last_day - timedelta(days=days - 1), last_day


def finished_payments(*, user: Any, since: datetime) -> QuerySet[Payment]:
    """Completed and failed payments of ``user``'s subscriptions whose outcome is after ``since``.

    Annotated with ``outcome_at`` (when the payment completed or its failure was recorded).
    """
    return (
        payment_list(user=user)
        .filter(
            Q(status=Payment.Status.COMPLETED, completed_at__gte=since)
            | Q(status=Payment.Status.FAILED, updated_at__gte=since)
        )
        .annotate(outcome_at=Coalesce("completed_at", "updated_at"))
    )


_VOLUME_AGGREGATES: dict[str, Any] = {
    "completed_count": Count("pk", filter=Q(status=Payment.Status.COMPLETED)),
    "failed_count": Count("pk", filter=Q(status=Payment.Status.FAILED)),
    "completed_sum": Sum("amount", filter=Q(status=Payment.Status.COMPLETED)),
    "failed_sum": Sum("amount", filter=Q(status=Payment.Status.FAILED)),
    "max_decimals": Max("token_decimals"),
}


def _exact(value: Decimal | None, decimals: int | None) -> Decimal:
    """A sum as an exact decimal with at most the token's decimal places.

    Every amount fits the token's atomic unit, so its sum does too. PostgreSQL sums numerics
    exactly; SQLite stores decimals as REAL, and quantizing removes the binary noise.
    """
    if value is None:
        return Decimal("0")
    value = Decimal(value)
    if decimals is not None:
        value = value.quantize(Decimal(1).scaleb(-decimals))
    return value


def _volume(row: Mapping[str, Any]) -> PaymentVolume:
    return PaymentVolume(
        completed=row["completed_count"] or 0,
        failed=row["failed_count"] or 0,
        completed_amount=_exact(row["completed_sum"], row["max_decimals"]),
        failed_amount=_exact(row["failed_sum"], row["max_decimals"]),
    )


def _window_start(first_day: date) -> datetime:
    return timezone.make_aware(datetime.combine(first_day, time.min))


def payment_volume_per_day(
    *, user: Any, days: int = DEFAULT_DAYS, now: datetime | None = None
) -> list[DayVolume]:
    """One entry per day of the window, oldest first; days without payments are zeros."""
    first_day, _ = analytics_window(days=days, now=now)
    rows = (
        finished_payments(user=user, since=_window_start(first_day))
        .annotate(day=TruncDate("outcome_at"))
        .order_by()
        .values("day")
        .annotate(**_VOLUME_AGGREGATES)
    )
    by_day = {row["day"]: _volume(row) for row in rows}
    return [
        DayVolume(day=day, volume=by_day.get(day, PaymentVolume()))
        for day in (first_day + timedelta(days=offset) for offset in range(days))
    ]


def payment_volume_per_day_by_network(
    *, user: Any, days: int = DEFAULT_DAYS, now: datetime | None = None
) -> dict[str, list[DayVolume]]:
    """``payment_volume_per_day`` for each network with finished payments in the window."""
    first_day, _ = analytics_window(days=days, now=now)
    rows = (
        finished_payments(user=user, since=_window_start(first_day))
        .annotate(day=TruncDate("outcome_at"))
        .order_by()
        .values("network", "day")
        .annotate(**_VOLUME_AGGREGATES)
    )
    by_network: dict[str, dict[date, PaymentVolume]] = {}
    for row in rows:
        by_network.setdefault(row["network"], {})[row["day"]] = _volume(row)
    return {
        network: [
            DayVolume(day=day, volume=by_day.get(day, PaymentVolume()))
            for day in (first_day + timedelta(days=offset) for offset in range(days))
        ]
        for network, by_day in sorted(by_network.items())
    }


def payment_volume_per_service(
    *, user: Any, days: int = DEFAULT_DAYS, now: datetime | None = None
) -> list[ServiceVolume]:
    """One entry per service name with finished payments in the window, largest volume first."""
    first_day, _ = analytics_window(days=days, now=now)
    rows = (
        finished_payments(user=user, since=_window_start(first_day))
        .order_by()
        .values(service_name=F("subscription__service_name"))
        .annotate(**_VOLUME_AGGREGATES)
    )
    services = [
        ServiceVolume(service_name=row["service_name"], volume=_volume(row)) for row in rows
    ]
    services.sort(key=lambda entry: (-entry.volume.completed_amount, entry.service_name))
    return services


def payment_volume_total(
    *, user: Any, days: int = DEFAULT_DAYS, now: datetime | None = None
) -> PaymentVolume:
    """Every finished payment of the window, added up."""
    first_day, _ = analytics_window(days=days, now=now)
    row = finished_payments(user=user, since=_window_start(first_day)).aggregate(
        **_VOLUME_AGGREGATES
    )
    return _volume(row)


def payment_analytics(
    *, user: Any, days: int = DEFAULT_DAYS, now: datetime | None = None
) -> PaymentAnalytics:
    """Volume and success rate per day, per service and in total over the last ``days`` days."""
    now = now or timezone.now()
    first_day, last_day = analytics_window(days=days, now=now)
    return PaymentAnalytics(
        days=days,
        first_day=first_day,
        last_day=last_day,
        per_day=payment_volume_per_day(user=user, days=days, now=now),
        per_service=payment_volume_per_service(user=user, days=days, now=now),
        totals=payment_volume_total(user=user, days=days, now=now),
    )


def failure_list(*, user: Any, limit: int = 20) -> QuerySet[Job]:
    """The latest failed jobs, newest first, with their error codes.

    Annotated with ``retryable``: the payment is not completed and has no job in flight, so
    ``jobs.services.job_retry`` would accept a retry right now.
    """
    open_job = Job.objects.filter(payment=OuterRef("payment"), status__in=Job.OPEN_STATUSES)
    return (
        job_list(user=user)
        .filter(status=Job.Status.FAILED)
        .annotate(
            retryable=ExpressionWrapper(
                ~Q(payment__status=Payment.Status.COMPLETED) & ~Exists(open_job),
                output_field=BooleanField(),
            )
        )
        .order_by(F("finished_at").desc(nulls_last=True), "-created_at")[:limit]
    )


def settlements_per_minute(
    *, user: Any, hours: int = 3, now: datetime | None = None
) -> tuple[list[datetime], dict[str, list[int]]]:
    """Payments completed in each minute of the last ``hours``, per network: the minutes
    (oldest first) and, for each network with a settlement in the window, one count per minute.
    """
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    minutes = [now - timedelta(minutes=offset) for offset in range(hours * 60 - 1, -1, -1)]
    rows = (
        payment_list(user=user)
        .filter(status=Payment.Status.COMPLETED, completed_at__gte=minutes[0])
        .annotate(minute=TruncMinute("completed_at"))
        .order_by()
        .values("network", "minute")
        .annotate(total=Count("pk"))
    )
    counts: dict[str, dict[datetime, int]] = {}
    for row in rows:
        counts.setdefault(row["network"], {})[row["minute"]] = row["total"]
    return minutes, {
        network: [by_minute.get(minute, 0) for minute in minutes]
        for network, by_minute in sorted(counts.items())
    }
