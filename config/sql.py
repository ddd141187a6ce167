"""Column lists of bulk INSERT ... SELECT statements, generated from the models.

A bulk insert names the values it sets on purpose (``explicit``: column -> SQL expression);
every other column takes its field's default, written as a SQL literal, or NULL when the field
is nullable. A column added to a model is therefore one edit (the model, with a default):
a field with neither a constant default nor null=True raises here, at import, instead of
failing the insert at run time.
"""

from __future__ import annotations

from typing import Any

from django.db import models
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
