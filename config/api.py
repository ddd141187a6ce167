"""API conventions shared by every endpoint: the error envelope of the baseline."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.routers import DefaultRouter
from rest_framework.views import exception_handler as drf_exception_handler


class OptionalSlashRouter(DefaultRouter):
    """Routes that answer with and without a trailing slash (the baseline had none).

    DRF turns any ``trailing_slash`` argument into ``"/"`` or ``""``, so the optional slash is
    set after initialisation; without it ``POST /api/subscriptions/1/trigger-payment`` (the
    baseline's path) was redirected to the slashed URL, which clients follow as a GET.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trailing_slash = "/?"


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for field, value in detail.items():
            message = _first_message(value)
            return message if field in ("non_field_errors", "detail") else f"{field}: {message}"
        return "Invalid input."
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "Invalid input."
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error answers ``{"success": false, "error": "<message>"}`` (plus field details)."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    body: dict[str, Any] = {"success": False, "error": _first_message(detail)}
    if isinstance(exc, exceptions.ValidationError) and isinstance(detail, dict):
        body["details"] = detail
    response.data = body
    return response


def error_response(message: str, http_status: int = status.HTTP_400_BAD_REQUEST) -> Response:
    return Response({"success": False, "error": message}, status=http_status)


def success_response(data: Any, http_status: int = status.HTTP_200_OK, **extra: Any) -> Response:
    return Response({"success": True, **extra, "data": data}, status=http_status)
