"""The base of every error a service raises for its caller to answer.

Each carries its HTTP status and a stable code; the API's one exception handler
(core.api.exception_handler) turns any of them into the error envelope, so views hold no
try/except ladders, and the admin and commands show the same message.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request a service refuses: the caller's mistake or the object's state, never a bug."""

    status_code = 400
    code = "invalid_request"

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class StateConflict(ServiceError):
    """The object is in a state that forbids the operation now (HTTP 409)."""

    status_code = 409
    code = "conflict"
