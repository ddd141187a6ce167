"""The audit log of operator and user actions (django-auditlog): who, when, what, before/after.

Why django-auditlog rather than django-simple-history: one append-only table of changes
(actor, time, the changed fields before and after, where from) that the admin shows as one
list, against a shadow table per model that copies every row on every save. The engine writes
payments and jobs constantly; a copy of each row per write would double that work for no
reader, while a diff of what a person changed is exactly what an operator audits.

What is recorded: every save and delete of the models listed in ``AUDITLOG_INCLUDE_TRACKING_
MODELS`` (settings) made by a person: through the admin, the dashboard and the API (the actor
is the authenticated user, token or session, and ``additional_data`` says from where), and by
management commands run through ``manage.py`` (the actor is the operating-system user, in
``additional_data``). The engine's own writes in Celery workers are not: it is not an operator
(the payments and jobs tables are its record). Entries are append-only: the admin cannot
change or delete them and, on PostgreSQL, triggers refuse any UPDATE, DELETE or TRUNCATE of the
table (autopay migrations 0004 and 0005); ``manage.py autopay_audit_prune`` is the one way old
entries leave it, on the record (autopay.audit).

"Recent actions" on the admin's index page is Django's own admin log: actions that do not go
through a change form (dashboard retry, admin bulk actions) write to it with
``core.admin_log.admin_log_action``.

Importable before Django is set up (``manage.py`` wraps every command in ``command_audit``).
"""

from __future__ import annotations

import contextlib
import getpass
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import django
from auditlog.context import auditlog_disabled, set_extra_data
from auditlog.middleware import AuditlogMiddleware
from django.http import HttpRequest

from core.client import client_address


class AuditMiddleware(AuditlogMiddleware):
    """auditlog's middleware, with the actor read when an entry is written rather than when
    the request arrives: API tokens are authenticated by DRF inside the view, after every
    middleware ran (DRF then sets the Django request's ``user``).

    The client's address and port are the ones the throttles trust (``API_NUM_PROXIES``):
    auditlog's own read X-Forwarded-For from anyone, so a client could name another address
    in the log, or break the request with a value that is no address at all."""

    @staticmethod
    def _get_remote_addr(request: HttpRequest) -> str | None:
        return client_address(request)

    @staticmethod
    def _get_remote_port(request: HttpRequest) -> int | None:
        return None

    def get_extra_data(self, request: HttpRequest) -> dict[str, Any]:
        data: dict[str, Any] = super().get_extra_data(request)
        data.pop("actor", None)

        def actor_id() -> Any:
            user = getattr(request, "user", None)
            return user.pk if user is not None and user.is_authenticated else None

        def actor_email() -> Any:
            user = getattr(request, "user", None)
            return (
                getattr(user, "email", None) if user is not None and user.is_authenticated else None
            )

        def where() -> dict[str, Any]:
            path = request.path_info
            via = (
                "api"
                if path.startswith("/api/")
                else "dashboard"
                if "/dashboard/" in path
                else "admin"
                if path.startswith("/admin/")
                else "web"
            )
            return {"via": via, "method": request.method, "path": path}

        data["actor_id"] = actor_id
        data["actor_email"] = actor_email
        data["additional_data"] = where
        return data


@contextlib.contextmanager
def command_audit(argv: Sequence[str]) -> Iterator[None]:
    """Changes made while a management command runs, recorded with who ran it and how."""
    try:
        django.setup()
    except Exception:
        # Settings that do not load: the command reports that itself (or shows its help).
        yield
        return
    try:
        user = getpass.getuser()
    except Exception:  # no user name in the environment (a container without /etc/passwd)
        user = "unknown"
    details = {
        "via": "command",
        "command": argv[1] if len(argv) > 1 else "",
        "argv": list(argv[1:])[:20],
        "os_user": user,
        "host": socket.gethostname(),
    }
    with set_extra_data(context_data={"additional_data": details}):
        yield


def audit_off() -> None:
    """This process's model changes are not audited (Celery workers: the engine)."""
    auditlog_disabled.set(True)
