"""Admin list filters the admin lacks: a range (from, to) on a number or time column."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList


class RangeListFilter(admin.FieldListFilter):
    """Two inputs, "from" and "to" (inclusive), on ``<field>__gte`` / ``<field>__lte``: the
    API's ``amount_min``/``amount_max`` and ``*_after``/``*_before`` in the admin's sidebar. A
    value the column cannot hold shows the admin's "incorrect lookup" page, as Django does."""

    template = "admin/autopay/range_filter.html"

    def __init__(
        self,
        field: Any,
        request: Any,
        params: Any,
        model: Any,
        model_admin: Any,
        field_path: str,
    ) -> None:
        self.lookup_from = f"{field_path}__gte"
        self.lookup_to = f"{field_path}__lte"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.title = f"{self.title} (range)"

    def expected_parameters(self) -> list[str | None]:
        return [self.lookup_from, self.lookup_to]

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        def first(name: str) -> str:
            value = self.used_parameters.get(name)
            if isinstance(value, list):
                return str(value[0]) if value else ""
            return "" if value is None else str(value)

        others = [
            (name, value)
            for name, values in changelist.params.items()
            if name not in self.expected_parameters()
            for value in (values if isinstance(values, list) else [values])
        ]
        yield {
            "from_name": self.lookup_from,
            "to_name": self.lookup_to,
            "from_value": first(self.lookup_from),
            "to_value": first(self.lookup_to),
            "others": others,
            "clear_url": changelist.get_query_string(remove=[self.lookup_from, self.lookup_to]),
        }
