"""Pruning the audit log on purpose: the one way entries leave it.

The table refuses UPDATE, DELETE and TRUNCATE (triggers of autopay migrations 0004 and 0005).
``audit_prune`` lifts the row trigger inside one transaction (``ALTER TABLE`` holds the
table's exclusive lock until commit, so no other session ever writes or deletes while it is
off), deletes the entries older than the cutoff, puts the trigger back and writes an entry of
its own saying how many went and up to when; a failure anywhere rolls all of it back.
"""

from __future__ import annotations

from datetime import datetime

from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import connection, transaction

ROW_TRIGGER = "autopay_auditlog_append_only"


def audit_prune(*, before: datetime) -> int:
    """Delete the audit entries written before ``before``; returns how many."""
    table = connection.ops.quote_name(LogEntry._meta.db_table)
    postgresql = connection.vendor == "postgresql"
    with transaction.atomic():
        if postgresql:
            with connection.cursor() as cursor:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {ROW_TRIGGER}")
        deleted, _ = LogEntry.objects.filter(timestamp__lt=before).delete()
        if postgresql:
            with connection.cursor() as cursor:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {ROW_TRIGGER}")
        LogEntry.objects.create(
            content_type=ContentType.objects.get_for_model(LogEntry),
            object_pk="",
            object_repr=f"audit entries before {before.isoformat()}",
            action=LogEntry.Action.DELETE,
            changes={"pruned_entries": [None, deleted], "before": [None, before.isoformat()]},
        )
    return deleted
