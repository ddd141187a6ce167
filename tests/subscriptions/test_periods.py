"""Billing period arithmetic: anchored periods, month-end clamping, and the index round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from subscriptions import periods


def at(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def starts(anchor: datetime, unit: str, count: int, how_many: int) -> list[datetime]:
    return [
        periods.period_start(anchor=anchor, unit=unit, count=count, index=index)
        for index in range(how_many)
    ]


def test_month_end_anchor_clamps_in_february_and_comes_back_in_march() -> None:
    anchor = at(2025, 1, 31)
    assert starts(anchor, "month", 1, 5) == [
        at(2025, 1, 31),
        at(2025, 2, 28),
        at(2025, 3, 31),
        at(2025, 4, 30),
        at(2025, 5, 31),
    ]


def test_month_end_anchor_in_a_leap_year_gives_february_29() -> None:
    anchor = at(2024, 1, 31)
    assert starts(anchor, "month", 1, 3) == [at(2024, 1, 31), at(2024, 2, 29), at(2024, 3, 31)]


def test_month_end_anchor_crosses_the_year_without_drift() -> None:
    anchor = at(2024, 11, 30, hour=23, minute=59)
    assert periods.period_start(anchor=anchor, unit="month", count=1, index=1) == at(
        2024, 12, 30, 23, 59
    )
    assert periods.period_start(anchor=anchor, unit="month", count=1, index=3) == at(
        2025, 2, 28, 23, 59
    )
    # Counted from the anchor, not from the clamped February: March 30th, not the 28th.
    assert periods.period_start(anchor=anchor, unit="month", count=1, index=4) == at(
        2025, 3, 30, 23, 59
    )


def test_quarterly_periods_from_a_month_end_anchor() -> None:
    anchor = at(2025, 8, 31)
    assert starts(anchor, "month", 3, 4) == [
        at(2025, 8, 31),
        at(2025, 11, 30),
        at(2026, 2, 28),
        at(2026, 5, 31),
    ]


def test_yearly_period_from_february_29() -> None:
    anchor = at(2024, 2, 29)
    assert starts(anchor, "year", 1, 5) == [
        at(2024, 2, 29),
        at(2025, 2, 28),
        at(2026, 2, 28),
        at(2027, 2, 28),
        at(2028, 2, 29),
    ]


@pytest.mark.parametrize(
    ("unit", "count", "step"),
    [
        ("minute", 1, timedelta(minutes=1)),
        ("minute", 15, timedelta(minutes=15)),
        ("hour", 2, timedelta(hours=2)),
        ("day", 1, timedelta(days=1)),
        ("week", 2, timedelta(weeks=2)),
    ],
)
def test_fixed_units_are_exact_multiples_of_the_step(
    unit: str, count: int, step: timedelta
) -> None:
    anchor = at(2025, 3, 30, 1, 30)
    assert starts(anchor, unit, count, 4) == [anchor + step * index for index in range(4)]


ROUND_TRIP_CASES = [
    ("minute", 1, at(2025, 1, 1, 0, 0)),
    ("minute", 7, at(2025, 6, 30, 23, 58)),
    ("hour", 1, at(2024, 2, 29, 23, 0)),
    ("hour", 5, at(2025, 1, 31, 22, 17)),
    ("day", 1, at(2024, 2, 28)),
    ("day", 3, at(2025, 12, 31, 23, 59)),
    ("week", 1, at(2024, 12, 30)),
    ("week", 4, at(2025, 1, 31)),
    ("month", 1, at(2024, 1, 31)),
    ("month", 1, at(2025, 3, 31, 23, 59)),
    ("month", 2, at(2024, 12, 31)),
    ("month", 6, at(2024, 8, 30, 0, 0)),
    ("year", 1, at(2024, 2, 29)),
    ("year", 2, at(2023, 12, 31, 23, 59)),
]


@pytest.mark.parametrize(("unit", "count", "anchor"), ROUND_TRIP_CASES)
def test_period_index_at_round_trips_period_start(unit: str, count: int, anchor: datetime) -> None:
    how_many = 30
    for index in range(how_many):
        start = periods.period_start(anchor=anchor, unit=unit, count=count, index=index)
        next_start = periods.period_start(anchor=anchor, unit=unit, count=count, index=index + 1)
        assert next_start > start
        # The first and the last instant of the period both belong to it.
        assert periods.period_index_at(anchor=anchor, unit=unit, count=count, moment=start) == (
            index
        ), (unit, count, anchor, index, "start")
        last_instant = next_start - timedelta(microseconds=1)
        assert (
            periods.period_index_at(anchor=anchor, unit=unit, count=count, moment=last_instant)
            == index
        ), (unit, count, anchor, index, "end")
        middle = start + (next_start - start) / 2
        assert (
            periods.period_index_at(anchor=anchor, unit=unit, count=count, moment=middle) == index
        ), (unit, count, anchor, index, "middle")


@pytest.mark.parametrize(("unit", "count", "anchor"), ROUND_TRIP_CASES)
def test_period_index_before_the_anchor_is_negative(
    unit: str, count: int, anchor: datetime
) -> None:
    before = anchor - timedelta(microseconds=1)
    assert periods.period_index_at(anchor=anchor, unit=unit, count=count, moment=before) < 0


def test_period_index_when_the_clamped_day_has_not_come_yet() -> None:
    # Anchor on the 31st at noon; on March 31st at 11:59 the March period has not begun.
    anchor = at(2025, 1, 31, 12, 0)
    assert (
        periods.period_index_at(
            anchor=anchor, unit="month", count=1, moment=at(2025, 3, 31, 11, 59)
        )
        == 1
    )
    assert (
        periods.period_index_at(anchor=anchor, unit="month", count=1, moment=at(2025, 3, 31, 12))
        == 2
    )
    # Far from the anchor the estimate still lands on the right period.
    assert (
        periods.period_index_at(anchor=anchor, unit="month", count=1, moment=at(2035, 2, 28, 13))
        == 121
    )


def test_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown billing interval unit"):
        periods.period_start(anchor=at(2025, 1, 1), unit="fortnight", count=1, index=1)


def test_model_units_and_period_units_agree() -> None:
    from subscriptions.models import Subscription

    assert set(Subscription.IntervalUnit.values) == set(periods.UNITS)
