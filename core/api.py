"""API conventions shared by every endpoint: the error envelope of the baseline.

Every error under ``/api/`` answers ``{"success": false, "error": "<message>"}`` (plus
``"details"`` per field for validation errors): DRF views through :func:`exception_handler`,
Django's own errors (unknown path, CSRF, oversized body, crash) through the JSON error views
below (``handler400``/``403``/``404``/``500`` in ``config/urls.py``) and
``core.middleware.ApiErrorMiddleware``. An unreachable database or Redis answers 503.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.db.models import Model
from django.http import Http404, HttpRequest, HttpResponse
from django.views import defaults
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework import exceptions, serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.routers import DefaultRouter
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import ServiceError
from core.middleware import (
    DATABASE_UNAVAILABLE,
    REDIS_UNAVAILABLE,
    ApiMetadata,
    is_api_request,
    json_error,
    payload_too_large_message,
    unavailable_message,
)

__all__ = [
    "DATABASE_UNAVAILABLE",
    "REDIS_UNAVAILABLE",
    "ApiMetadata",
    "AutoSchema",
    "OptionalSlashRouter",
    "error_response",
    "exception_handler",
    "not_found_message",
    "success_response",
]

logger = logging.getLogger(__name__)

# PostgreSQL's bigint: a larger id cannot name any row.
_BIGINT_MAX = 2**63 - 1


class OptionalSlashRouter(DefaultRouter):
    """Routes that answer with and without a trailing slash (the baseline had none).

    DRF turns any ``trailing_slash`` argument into ``"/"`` or ``""``, so the optional slash is
    set after initialisation; without it ``POST /api/subscriptions/1/trigger-payment`` (the
    baseline's path) was redirected to the slashed URL, which clients follow as a GET.

    No format-suffix routes (``/api/subscriptions.json``): JSON is the only format clients use
    (``?format=`` still selects a renderer), and the suffix reached views that do not take a
    ``format`` argument, a 500.
    """

    include_format_suffixes = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trailing_slash = "/?"
        # Root links to routes the router does not own (plain views: analytics, tokens...),
        # name -> URL name; the composition root fills it.
        self.root_links: dict[str, str] = {}

    def get_api_root_view(self, api_urls: Any = None) -> Any:
        """``GET /api/``: every resource, the router's lists and ``root_links``, by name.

        A prefix registered twice (subscriptions and their trigger action) keeps its list."""
        links: dict[str, str] = {}
        for prefix, _viewset, basename in self.registry:
            name = self.routes[0].name.format(basename=basename)
            if "(?P<" not in prefix:
                links.setdefault(prefix, name)
        links.update(self.root_links)
        return self.APIRootView.as_view(api_root_dict=links)


# --- DRF views -----------------------------------------------------------------------------


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Service unavailable; try again shortly."
    default_code = "service_unavailable"


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for field, value in detail.items():
            message = _first_message(value)
            return message if field in ("non_field_errors", "detail") else f"{field}: {message}"
        return "Invalid input."
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "Invalid input."
    return str(detail)


def _names_a_missing_row(context: dict[str, Any]) -> bool:
    """An id in the URL beyond bigint: no row can have it."""
    for value in (context.get("kwargs") or {}).values():
        text = str(value).lstrip("-")
        if text.isdigit() and int(text) > _BIGINT_MAX:
            return True
    return False


def not_found_message(view: Any) -> str:
    """One 404 text on every route: "<Resource> not found." (``Subscription not found.``), the
    resource being the view's ``not_found_name`` or its model's name; else "Not found."."""
    name = getattr(view, "not_found_name", None)
    if name is None:
        queryset = getattr(view, "queryset", None)
        if queryset is None and view is not None:
            try:
                queryset = view.get_queryset()
            except Exception:
                queryset = None
        model = getattr(queryset, "model", None)
        name = str(model._meta.verbose_name) if model is not None else None
    return f"{name[:1].upper()}{name[1:]} not found." if name else "Not found."


def _translate(exc: Exception, context: dict[str, Any]) -> Exception:
    """Django, database and Redis exceptions as the API exception they mean."""
    if isinstance(exc, DjangoValidationError):
        return exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )
    if isinstance(exc, Http404):
        return exceptions.NotFound(not_found_message(context.get("view")))
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge(payload_too_large_message())
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        return exceptions.ParseError(str(exc))
    unavailable = unavailable_message(exc)
    if unavailable:
        logger.warning("%s (%s: %s)", unavailable, type(exc).__name__, exc)
        return ServiceUnavailable(unavailable)
    if isinstance(exc, DataError):
        # PostgreSQL refused a value ("bigint out of range", a malformed literal): the
        # request's fault, never a crash.
        logger.info("rejected a value the database cannot hold: %s", exc)
        if _names_a_missing_row(context):
            return exceptions.NotFound("Not found.")
        return exceptions.ValidationError("A value in the request is out of range or malformed.")
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error answers ``{"success": false, "error": "<message>"}`` (plus field details).

    Anything not translated here is re-raised by DRF and answered by ``server_error`` (JSON 500).
    """
    if isinstance(exc, ServiceError):
        # A service refused (state, conflict): its own status and message, with its code.
        return Response(
            {"success": False, "error": exc.message, "code": exc.code}, status=exc.status_code
        )
    exc = _translate(exc, context)
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


class JsonErrorsMixin:
    """For the schema and docs pages (YAML, HTML): any other method than GET/HEAD (OPTIONS, a
    405) answers JSON instead of a template that does not exist."""

    def get_renderers(self) -> list[Any]:
        if getattr(getattr(self, "request", None), "method", "GET") not in ("GET", "HEAD"):
            return [JSONRenderer()]
        return list(super().get_renderers())  # type: ignore[misc]


# --- Django's own errors under /api/ (handler400/403/404/500 in config/urls.py) ------------


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not is_api_request(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return json_error(payload_too_large_message(), status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exception, (TooManyFieldsSent, TooManyFilesSent)):
        return json_error(str(exception), status.HTTP_400_BAD_REQUEST)
    # Other suspicious operations (a bad Host, a malformed upload) are not explained.
    return json_error("Bad request.", status.HTTP_400_BAD_REQUEST)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not is_api_request(request):
        return defaults.permission_denied(request, exception)
    message = str(exception) or "You do not have permission to perform this action."
    return json_error(message, status.HTTP_403_FORBIDDEN)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not is_api_request(request):
        return defaults.page_not_found(request, exception)
    return json_error("Not found.", status.HTTP_404_NOT_FOUND)


def server_error(request: HttpRequest) -> HttpResponse:
    """500, or 503 when the uncaught exception (being handled now) is an unreachable database
    or Redis, e.g. raised by a middleware or a plain Django view rather than a DRF view."""
    if not is_api_request(request):
        return defaults.server_error(request)
    unavailable = unavailable_message(sys.exc_info()[1])
    if unavailable:
        return json_error(unavailable, status.HTTP_503_SERVICE_UNAVAILABLE)
    return json_error("Internal server error.", status.HTTP_500_INTERNAL_SERVER_ERROR)


# --- OpenAPI ---------------------------------------------------------------------------------


class ApiErrorSerializer(serializers.Serializer):
    """What every error answers."""

    success = serializers.BooleanField()
    error = serializers.CharField()
    details = serializers.DictField(
        required=False, help_text="Per field messages (validation errors only)."
    )
    code = serializers.CharField(
        required=False, help_text="Stable code of a refusal by the service (state, conflict)."
    )


_BODY_METHODS = {"POST", "PUT", "PATCH"}


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's schema, completed with what the API really answers:

    * the error responses every operation can give, in the envelope (``ApiError``): 400 and
      415 for a body or query, 401/403 when authentication is required, 404 for paths with an
      id, 413 for bodies, 429 when throttled, 503 when the database or Redis is unreachable;
      responses an operation declares itself are kept;
    * read-only fields backed by a nullable model column (e.g. a subscription's ``wallet``)
      are ``nullable``.
    """

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        ref = self.resolve_serializer(ApiErrorSerializer, "response").ref

        def error(description: str) -> dict[str, Any]:
            return {"content": {"application/json": {"schema": ref}}, "description": description}

        codes: dict[str, str] = {}
        parameters = operation.get("parameters", [])
        has_body = self.method in _BODY_METHODS and "requestBody" in operation
        if has_body or any(parameter.get("in") == "query" for parameter in parameters):
            codes["400"] = "Invalid input"
        if not any(requirement == {} for requirement in operation.get("security", [{}])):
            codes["401"] = "Not authenticated"
            codes["403"] = "Not allowed"
        if any(parameter.get("in") == "path" for parameter in parameters):
            codes["404"] = "Not found (or not yours)"
        elif self._pages(parameters):
            codes["404"] = "No such page"
        if self.method in _BODY_METHODS:
            codes["413"] = "Request body too large"
        if has_body:
            codes["415"] = "Unsupported content type"
        if self.view.get_throttles():
            codes["429"] = "Too many requests"
        codes["503"] = "Database or Redis unreachable"
        if self.method == "POST" and not getattr(self.view, "idempotency_exempt", False):
            _document_idempotency(operation, codes)
        responses = operation.setdefault("responses", {})
        for code, description in codes.items():
            responses.setdefault(code, error(description))
        return operation

    def _pages(self, parameters: list[dict[str, Any]]) -> bool:
        """The operation takes the paginator's page number (a page past the end is a 404)."""
        name = getattr(self._get_paginator(), "page_query_param", None)
        return bool(name) and any(
            parameter.get("in") == "query" and parameter.get("name") == name
            for parameter in parameters
        )

    def _get_serializer_field_meta(self, field: Any, direction: str) -> dict[str, Any]:
        meta: dict[str, Any] = super()._get_serializer_field_meta(field, direction)
        if field.read_only and not meta.get("nullable") and _model_field_is_nullable(field):
            meta["nullable"] = True
        return meta


def _document_idempotency(operation: dict[str, Any], codes: dict[str, str]) -> None:
    """Every POST takes an ``Idempotency-Key`` (core.idempotency.middleware)."""
    operation.setdefault("parameters", []).append(
        {
            "in": "header",
            "name": "Idempotency-Key",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            "description": (
                "Any unique string (e.g. a UUID). The first answer is kept for 24 h for you and "
                "this key; a repeat of the same request gets it again (with "
                "`Idempotent-Replayed: true`) without acting, a different request with the same "
                "key answers 422, a repeat while the first still runs answers 409."
            ),
        }
    )
    codes.setdefault("400", "Invalid input (or Idempotency-Key)")
    codes["409"] = "Conflict (or a request with this Idempotency-Key is still running)"
    codes["422"] = "Idempotency-Key used with a different request"


def _model_field_is_nullable(field: Any) -> bool:
    model = getattr(getattr(field.parent, "Meta", None), "model", None)
    source = getattr(field, "source", "")
    if not (isinstance(model, type) and issubclass(model, Model)) or not source:
        return False
    if "." in source or source == "*":
        return False
    try:
        return bool(getattr(model._meta.get_field(source), "null", False))
    except Exception:  # not a model field (a property, an annotation)
        return False
