"""Query-parameter filters shared by the apps' FilterSets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField

# The largest value of a PostgreSQL bigint: anything above cannot name a row.
BIGINT_MAX = 2**63 - 1


class IdFilter(filters.NumberFilter):
    """A row id: a whole number from 1 to the database's largest, else 400 with a message."""

    field_class = forms.IntegerField

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", BIGINT_MAX)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


class AmountFilter(filters.NumberFilter):
    """An exact decimal bound on an amount (``amount_min=9.99``); not a number answers 400."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("min_value", 0)
        kwargs.setdefault("max_digits", 60)
        kwargs.setdefault("decimal_places", 18)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


class UtcDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, handed to the database in UTC: PostgreSQL refuses offsets beyond
    ±15:59 that Python accepts, and a time near year 1 or 9999 may not exist in UTC."""

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except (OverflowError, ValueError) as exc:
            raise forms.ValidationError("Enter a time that exists in UTC.") from exc


class TimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


def time_range(field_name: str, label: str) -> tuple[TimeFilter, ...]:
    """``<label>_after`` / ``<label>_before`` (ISO 8601, inclusive) filters on a time column."""
    return (
        TimeFilter(
            field_name=field_name, lookup_expr="gte", help_text=f"{label} at or after (ISO 8601)."
        ),
        TimeFilter(
            field_name=field_name, lookup_expr="lte", help_text=f"{label} at or before (ISO 8601)."
        ),
    )


def _invalid_choice(choices: Any) -> str:
    values = ", ".join(str(value) for value, _label in choices)
    return f"%(value)s is not one of the valid values: {values}."


class ChoiceFilter(filters.ChoiceFilter):
    """One of fixed values; an unknown one answers 400 listing the valid ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("error_messages", {"invalid_choice": _invalid_choice(kwargs["choices"])})
        super().__init__(*args, **kwargs)


class MultipleChoiceFilter(filters.MultipleChoiceFilter):
    """Values from a fixed set (the parameter repeated); an unknown one answers 400 listing the
    valid ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("error_messages", {"invalid_choice": _invalid_choice(kwargs["choices"])})
        super().__init__(*args, **kwargs)
