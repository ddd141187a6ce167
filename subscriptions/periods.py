"""Billing period arithmetic.

Periods are counted from the subscription's anchor, never from the previous period, so that
month ends do not drift (an anchor on the 31st gives the 28th or 29th in February and the 31st
again in March).
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

from core.errors import ServiceError

UNITS = ("minute", "hour", "day", "week", "month", "year")

# The longest billing period: ten years (periods far apart soon leave the calendar's range).
MAX_PERIOD_MONTHS = 120
MAX_PERIOD_FIXED = timedelta(days=3653)

_FIXED = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}


class PeriodOutOfRange(ServiceError):
    """A period whose date the calendar cannot hold (after the year 9999)."""

    code = "period_out_of_range"


def interval_is_bounded(*, unit: str, count: int) -> bool:
    """Whether one period of ``count`` ``unit``s lasts at most ten years."""
    if unit in _FIXED:
        return _FIXED[unit] * count <= MAX_PERIOD_FIXED
    return count * (12 if unit == "year" else 1) <= MAX_PERIOD_MONTHS


def add_months(moment: datetime, months: int) -> datetime:
    """Return ``moment`` moved by ``months`` calendar months, clamping the day of month."""
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def period_start(*, anchor: datetime, unit: str, count: int, index: int) -> datetime:
    """Start of the ``index``-th billing period (index 0 starts at the anchor); raises
    PeriodOutOfRange past the calendar's end."""
    if unit not in UNITS:
        raise ValueError(f"unknown billing interval unit: {unit}")
    try:
        if unit in _FIXED:
            return anchor + _FIXED[unit] * (count * index)
        return add_months(anchor, count * index * (12 if unit == "year" else 1))
    except (OverflowError, ValueError) as exc:
        raise PeriodOutOfRange(
            f"Period {index} of this subscription would start after the year 9999."
        ) from exc


def period_index_at(*, anchor: datetime, unit: str, count: int, moment: datetime) -> int:
    """Index of the period that contains ``moment`` (negative before the anchor)."""
    if moment < anchor:
        return -1
    if unit in _FIXED:
        return int((moment - anchor) // (_FIXED[unit] * count))
    months_per_period = count * (12 if unit == "year" else 1)
    months = (moment.year - anchor.year) * 12 + (moment.month - anchor.month)
    index = max(months // months_per_period, 0)
    # The calendar estimate can be one too high when the day of month has not come yet.
    while index > 0 and period_start(anchor=anchor, unit=unit, count=count, index=index) > moment:
        index -= 1
    while period_start(anchor=anchor, unit=unit, count=count, index=index + 1) <= moment:
        index += 1
    return index


def missed_period_split(
    *, next_index: int, current_index: int, max_missed: int
) -> tuple[range, range]:
    """Of the periods from ``next_index`` up to the current one, which are waived and which are
    charged: at most ``max_missed`` (the newest) are charged, oldest first; older ones owed
    while the engine was down are waived, never charged."""
    first_charged = max(next_index, current_index - max(max_missed, 1) + 1)
    return range(next_index, first_charged), range(first_charged, current_index + 1)
