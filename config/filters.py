"""Query-parameter filters shared by the apps' FilterSets."""

from __future__ import annotations

from django import forms
from django_filters import rest_framework as filters

# The largest value of a PostgreSQL bigint: anything above cannot name a row.
BIGINT_MAX = 2**63 - 1


class IdFilter(filters.NumberFilter):
    """A row id: a whole number from 1 to the database's largest, else 400 with a message."""

    field_class = forms.IntegerField

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", BIGINT_MAX)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
