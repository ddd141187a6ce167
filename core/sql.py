"""Bulk SQL helpers: column lists of INSERT ... SELECT statements, generated from the models,
and a binary cursor for statements with large array parameters.

A bulk insert names the values it sets on purpose (``explicit``: column -> SQL expression);
every other column takes its field's default, written as a SQL literal, or NULL when the field
is nullable. A column added to a model is therefore one edit (the model, with a default):
a field with neither a constant default nor null=True raises here, at import, instead of
failing the insert at run time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection, models
from django.db.models.fields import NOT_PROVIDED


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {value!r}")


def insert_lists(model: type[models.Model], explicit: dict[str, str]) -> tuple[str, str]:
    """``(columns, expressions)`` for ``INSERT INTO table (columns) SELECT expressions``."""
    columns, expressions = [], []
    for field in model._meta.concrete_fields:
        column = str(field.column)
        if isinstance(field, models.AutoField | models.BigAutoField) and column not in explicit:
            continue  # the database numbers the row
        if column in explicit:
            expression = explicit[column]
        elif field.default is not NOT_PROVIDED and not callable(field.default):
            expression = _literal(field.default)
        elif field.null:
            expression = "NULL"
        else:
            raise ValueError(
                f"{model.__name__}.{field.name} has no constant default: set it explicitly"
            )
        columns.append(column)
        expressions.append(expression)
    unknown = set(explicit) - set(columns)
    if unknown:
        raise ValueError(f"{model.__name__} has no column {sorted(unknown)}")
    return ", ".join(columns), ", ".join(expressions)


@contextmanager
def binary_cursor() -> Iterator[Any]:
    """A cursor on Django's connection (same transaction, same execute wrappers and query log)
    that binds parameters on the server and moves them and the results in binary, PostgreSQL
    only. Django's default client-side binding formats array parameters as text, escaping
    every element: slower than the statement itself for arrays of hundreds of values."""
    connection.ensure_connection()
    raw: Any = psycopg.Cursor(connection.connection)
    raw.format = psycopg.pq.Format.BINARY
    wrapped = (
        connection.make_debug_cursor(raw)
        if connection.queries_logged
        else connection.make_cursor(raw)
    )
    try:
        yield wrapped
    finally:
        raw.close()
