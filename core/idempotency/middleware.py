"""``Idempotency-Key`` on every POST under /api/ (Stripe's semantics).

The first request with a key runs and its answer (status and body) is kept for
``API_IDEMPOTENCY_TTL_HOURS`` (24 h) per user and key; a repeat with the same method, path and
body gets that answer again (``Idempotent-Replayed: true``) without acting; a repeat with a
different request answers 422; a repeat while the first still runs answers 409. Answers that
mean the operation did not run (5xx, 401/403, 413/415, 429) are not kept, so a retry runs.

The key belongs to a user, so the middleware authenticates the request the way the view will
(the view's own authentication classes: token or session) before the view runs; anonymous
requests (a password login) are not subject to it. The row's unique constraint decides which
of two concurrent requests runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from rest_framework.request import Request

from core.idempotency.models import IdempotencyKey
from core.middleware import is_api_request

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# A request still marked processing after this long is taken to have died (longer than any
# request lives: gunicorn's timeout is 60 s).
LOCK_SECONDS = 120
# Answers that mean the operation did not run: a retry with the same key runs it.
_NOT_KEPT = {401, 403, 413, 415, 429}


def fingerprint(request: HttpRequest) -> str:
    digest = hashlib.sha256()
    digest.update((request.method or "").encode())
    digest.update(b"\n" + request.get_full_path().encode() + b"\n")
    digest.update(request.body)
    return digest.hexdigest()


def _fernet() -> MultiFernet:
    keys = [key for key in getattr(settings, "AUTOPAY_KEY_ENCRYPTION_KEYS", []) if key]
    if not keys:
        raise ImproperlyConfigured("AUTOPAY_KEY_ENCRYPTION_KEYS is not set")
    return MultiFernet([Fernet(key.strip().encode()) for key in keys])


def _error(message: str, status: int, code: str) -> JsonResponse:
    return JsonResponse({"success": False, "error": message, "code": code}, status=status)


def _authenticated_user(request: HttpRequest, view_func: Any) -> Any:
    """The user the view will see, authenticated by the view's own classes; None if none."""
    view_class = getattr(view_func, "cls", None)
    if view_class is None:
        user = getattr(request, "user", None)
        return user if user is not None and user.is_authenticated else None
    authenticators = [auth() for auth in view_class.authentication_classes]
    try:
        user = Request(request, authenticators=authenticators).user
    except Exception:
        # Bad credentials or CSRF: the view answers that itself.
        return None
    return user if user is not None and user.is_authenticated else None


class IdempotencyMiddleware:
    """Place it after AuthenticationMiddleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., HttpResponse],
        view_args: Any,
        view_kwargs: Any,
    ) -> HttpResponse | None:
        key = request.headers.get(HEADER)
        if key is None or request.method != "POST" or not is_api_request(request):
            return None
        if getattr(getattr(view_func, "cls", None), "idempotency_exempt", False):
            return None
        key = key.strip()
        # Control characters (a NUL above all, which PostgreSQL text refuses) are never part
        # of a key a client meant to send.
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            return _error(
                f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters.",
                400,
                "invalid_idempotency_key",
            )
        user = _authenticated_user(request, view_func)
        if user is None:
            return None
        try:
            _fernet()
        except (ImproperlyConfigured, ValueError):
            logger.error("idempotency keys need AUTOPAY_KEY_ENCRYPTION_KEYS; %s ignored", HEADER)
            return None

        row, answer = self._claim(request, user, key)
        if answer is not None:
            return answer
        assert row is not None
        try:
            response = view_func(request, *view_args, **view_kwargs)
            render = getattr(response, "render", None)
            if callable(render):
                response = render()
        except BaseException:
            IdempotencyKey.objects.filter(pk=row.pk).delete()
            raise
        self._keep(row, response)
        return response

    def _claim(
        self, request: HttpRequest, user: Any, key: str
    ) -> tuple[IdempotencyKey | None, HttpResponse | None]:
        """The new row this request owns, or the answer it gets instead."""
        digest = fingerprint(request)
        now = timezone.now()
        for _ in range(2):
            try:
                with transaction.atomic():
                    row = IdempotencyKey.objects.create(
                        user=user,
                        key=key,
                        fingerprint=digest,
                        method=request.method or "",
                        path=request.get_full_path()[:500],
                        locked_until=now + timedelta(seconds=LOCK_SECONDS),
                        expires_at=now + timedelta(hours=settings.API_IDEMPOTENCY_TTL_HOURS),
                    )
                return row, None
            except IntegrityError:
                pass
            existing = IdempotencyKey.objects.filter(user=user, key=key).first()
            if existing is None:
                continue  # deleted meanwhile (expired, or the first request failed): try again
            if existing.expires_at <= now:
                IdempotencyKey.objects.filter(pk=existing.pk, expires_at__lte=now).delete()
                continue
            if existing.fingerprint != digest:
                return None, _error(
                    f"This {HEADER} was used with a different request (method, path or body); "
                    "use a new key for a new request.",
                    422,
                    "idempotency_key_reused",
                )
            if existing.status == IdempotencyKey.Status.COMPLETED:
                return None, self._replay(existing)
            if existing.locked_until <= now and IdempotencyKey.objects.filter(
                pk=existing.pk,
                status=IdempotencyKey.Status.PROCESSING,
                locked_until=existing.locked_until,
            ).update(locked_until=now + timedelta(seconds=LOCK_SECONDS)):
                return existing, None  # its first request died: this one runs it
            conflict = _error(
                f"A request with this {HEADER} is still being processed; retry shortly.",
                409,
                "idempotency_key_in_use",
            )
            conflict["Retry-After"] = "1"
            return None, conflict
        return None, _error(
            f"This {HEADER} could not be claimed; retry shortly.", 409, "idempotency_key_in_use"
        )

    def _keep(self, row: IdempotencyKey, response: HttpResponse) -> None:
        status = response.status_code
        if status >= 500 or status in _NOT_KEPT or response.streaming:
            IdempotencyKey.objects.filter(pk=row.pk).delete()
            return
        IdempotencyKey.objects.filter(pk=row.pk).update(
            status=IdempotencyKey.Status.COMPLETED,
            response_status=status,
            response_content_type=response.get("Content-Type", "")[:100],
            response_body=_fernet().encrypt(response.content).decode(),
        )

    def _replay(self, row: IdempotencyKey) -> HttpResponse:
        try:
            body = _fernet().decrypt(row.response_body.encode())
        except InvalidToken:
            return _error(
                f"The answer kept for this {HEADER} cannot be read (the encryption keys "
                "changed); use a new key.",
                422,
                "idempotency_key_unreadable",
            )
        response = HttpResponse(
            body,
            status=row.response_status or 200,
            content_type=row.response_content_type or "application/json",
        )
        response[REPLAYED_HEADER] = "true"
        return response


def idempotency_keys_purge() -> int:
    """Delete expired keys (called by the hourly purge)."""
    deleted, _ = IdempotencyKey.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
