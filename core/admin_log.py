"""Entries of the admin's own log ("Recent actions") for actions outside a change form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import Model, QuerySet


def admin_log_action(*, user: Any, objects: QuerySet[Any] | Sequence[Model], message: str) -> None:
    """An entry of the admin's own log ("Recent actions") for an action taken outside a change
    form: a dashboard retry, a bulk action."""
    if not objects or user is None or not getattr(user, "pk", None):
        return
    if isinstance(objects, QuerySet):
        queryset = objects
    else:
        model = type(objects[0])
        queryset = model._default_manager.filter(pk__in=[obj.pk for obj in objects])
    LogEntry.objects.log_actions(
        user_id=user.pk,
        queryset=queryset,
        action_flag=CHANGE,
        change_message=message,
    )
