"""Request plumbing of /api/ that loads early: the middleware, the OPTIONS metadata and the
envelope helpers they share with ``core.api``.

* ``ApiErrorMiddleware``: a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` answers 413 before
  anything reads it, and every error Django itself answers under /api/ (an unknown method on a
  plain Django view, a CSRF failure, a crash page) becomes the JSON envelope
  ``{"success": false, "error": ...}``.
* ``ApiMetadata`` (``DEFAULT_METADATA_CLASS``): OPTIONS never fails.

DRF imports ``DEFAULT_METADATA_CLASS`` while it defines ``APIView``, so this module must not
import anything that needs ``rest_framework.views`` (routers, generic views, drf-spectacular).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from kombu.exceptions import OperationalError as BrokerError
from rest_framework import status
from rest_framework.metadata import SimpleMetadata
from rest_framework.request import Request
from rest_framework.response import Response

API_PREFIX = "/api/"
DATABASE_UNAVAILABLE = "Database unavailable; try again shortly."
REDIS_UNAVAILABLE = "Redis unavailable; try again shortly."
# Headers of the original error that the envelope keeps.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Vary")


def is_api_request(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX) or request.path_info == API_PREFIX[:-1]


def json_error(message: str, http_status: int, **extra: Any) -> JsonResponse:
    """The envelope as a plain Django response (outside DRF views)."""
    return JsonResponse({"success": False, "error": message, **extra}, status=http_status)


def payload_too_large_message() -> str:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return "Request body too large."
    return f"Request body too large (the limit is {limit} bytes)."


def default_message(http_status: int, method: str = "") -> str:
    if http_status == status.HTTP_405_METHOD_NOT_ALLOWED and method:
        return f'Method "{method}" not allowed.'  # DRF's wording
    if http_status == status.HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return payload_too_large_message()
    try:
        phrase = HTTPStatus(http_status).phrase
    except ValueError:
        return "Request failed."
    return f"{phrase[:1]}{phrase[1:].lower()}."


def unavailable_message(exc: BaseException | None) -> str | None:
    """The 503 message when ``exc`` means the database or Redis cannot be reached, else None."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return DATABASE_UNAVAILABLE
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return REDIS_UNAVAILABLE
    if isinstance(exc, BrokerError):  # Celery could not publish to its Redis broker
        return REDIS_UNAVAILABLE
    return None


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except (TypeError, ValueError):
        return 0  # as Django reads it: no body


def _is_json(response: HttpResponse) -> bool:
    content_type = response.get("Content-Type", "")
    return content_type.startswith("application/json") or "+json" in content_type


class ApiErrorMiddleware:
    """Place it right after SecurityMiddleware/WhiteNoise, before anything reads the body.

    DRF responses already carry the envelope (``core.api.exception_handler``), in the format
    the client negotiated, and are left alone.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not is_api_request(request):
            return self.get_response(request)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and _content_length(request) > limit:
            return json_error(payload_too_large_message(), status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        response = self.get_response(request)
        if response.status_code < 400 or isinstance(response, Response) or _is_json(response):
            return response
        envelope = json_error(
            default_message(response.status_code, request.method or ""), response.status_code
        )
        for header in _KEPT_HEADERS:
            if header in response:
                envelope[header] = response[header]
        return envelope


class ApiMetadata(SimpleMetadata):
    """OPTIONS never fails: a view without a serializer (it shapes its answers by hand, as the
    job endpoints do) describes no request fields instead of raising."""

    def determine_actions(self, request: Request, view: Any) -> dict[str, Any]:
        try:
            return dict(super().determine_actions(request, view))
        except AssertionError:  # "should either include a `serializer_class` attribute"
            return {}
