"""CSV export of API lists and admin selections, streamed row by row.

A list answers CSV when asked with ``?format=csv`` or ``Accept: text/csv``: the same filters,
search and ordering as its JSON pages, every matching row, no pagination. Rows are read from
the database through a server-side cursor in chunks (``QuerySet.iterator``) and written out as
they come (``StreamingHttpResponse``), so memory stays flat however many rows match. Amounts are
exact decimal strings, times ISO 8601 in UTC.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from core.networks import token_symbol

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
# Rows fetched per round trip of the server-side cursor.
CSV_CHUNK_SIZE = 2000
# Lines written out per piece of the streamed answer.
CSV_LINES_PER_PIECE = 500
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): such
# text cells get a leading apostrophe. Numbers and times never start with one.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Column:
    """One CSV column: its header and the ``values_list`` path it is read from."""

    header: str
    path: str
    kind: str = "text"  # text | amount | time | number | symbol (of a network's token)


def _text(value: Any) -> str:
    text = str(value)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def _amount(value: Any) -> str:
    return format(value.normalize(), "f") if isinstance(value, Decimal) else str(value)


def _time(value: Any) -> str:
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return str(value.astimezone(UTC).isoformat())


_FORMATTERS: dict[str, Callable[[Any], Any]] = {
    "text": _text,
    "amount": _amount,
    "time": _time,
    "number": str,
    "symbol": token_symbol,
}


def cell(value: Any, kind: str = "text") -> Any:
    """A value as its CSV text: exact decimals, ISO times in UTC, empty for None, and text
    that a spreadsheet would run as a formula defused."""
    if value is None:
        return ""
    return _FORMATTERS[kind](value)


def csv_rows(queryset: QuerySet[Any], columns: Sequence[Column]) -> Iterator[list[Any]]:
    """The rows of ``queryset`` as CSV cells, read in chunks through a server-side cursor."""
    formatters = [_FORMATTERS[column.kind] for column in columns]
    values = queryset.values_list(*(column.path for column in columns))
    for row in values.iterator(chunk_size=CSV_CHUNK_SIZE):
        yield [
            "" if value is None else formatter(value)
            for value, formatter in zip(row, formatters, strict=True)
        ]


def csv_response(
    *, filename: str, columns: Sequence[Column], rows: Iterable[Sequence[Any]]
) -> StreamingHttpResponse:
    """A streamed CSV download: the header line, then the rows, a few hundred per piece."""

    def pieces() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([column.header for column in columns])
        iterator = iter(rows)
        while batch := list(itertools.islice(iterator, CSV_LINES_PER_PIECE)):
            writer.writerows(batch)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        if buffer.tell():  # the header of an empty export
            yield buffer.getvalue()

    response = StreamingHttpResponse(pieces(), content_type=CSV_CONTENT_TYPE)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def queryset_csv(
    queryset: QuerySet[Any], columns: Sequence[Column], *, name: str
) -> StreamingHttpResponse:
    """``queryset`` as a streamed CSV file named ``<name>-<UTC time>.csv``."""
    stamp = timezone.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    rows = csv_rows(queryset, columns)
    # The query runs now, in the view: a value the database refuses is the request's error
    # (400 in the envelope), not a download that breaks off.
    first = list(itertools.islice(rows, 1))
    return csv_response(
        filename=f"{name}-{stamp}.csv", columns=columns, rows=itertools.chain(first, rows)
    )


class CsvRenderer(BaseRenderer):
    """Makes ``?format=csv`` and ``Accept: text/csv`` acceptable to a list view; the view
    streams the rows itself (``CsvExportMixin``), so this renders nothing but a fallback."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        return b"" if data is None else str(data).encode()


def csv_list_schema(serializer: Any) -> Any:
    """The OpenAPI description of a list that also answers CSV: a page of JSON, or the whole
    filtered list as ``text/csv``; ``format`` chooses (so does ``Accept``)."""
    return extend_schema(
        parameters=[
            OpenApiParameter(
                "format",
                str,
                enum=["json", "csv"],
                description="csv: every matching row as a streamed CSV file (no pages).",
            )
        ],
        responses={
            (200, "application/json"): serializer(many=True),
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="CSV with a header line; exact decimal amounts."
            ),
        },
    )


class CsvExportMixin:
    """For a list viewset: ``list`` answers CSV when the client asked for it.

    Set ``csv_columns`` and ``csv_name``; the rows are ``filter_queryset(get_queryset())``
    (filters, search and ordering apply; pagination does not). Errors still answer the JSON
    envelope.
    """

    csv_columns: Sequence[Column] = ()
    csv_name = "export"

    def get_renderers(self) -> list[BaseRenderer]:
        renderers = list(super().get_renderers())  # type: ignore[misc]
        if getattr(self, "action", None) == "list":
            renderers.append(CsvRenderer())
        return renderers

    def wants_csv(self) -> bool:
        renderer = getattr(getattr(self, "request", None), "accepted_renderer", None)
        return isinstance(renderer, CsvRenderer)

    def csv_export(self) -> StreamingHttpResponse:
        queryset = self.filter_queryset(self.get_queryset())  # type: ignore[attr-defined]
        return queryset_csv(queryset, self.csv_columns, name=self.csv_name)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        # An error of a CSV request (a bad filter, a throttle) answers the JSON envelope.
        if isinstance(response, Response) and isinstance(response.accepted_renderer, CsvRenderer):
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = "application/json"
        return response
