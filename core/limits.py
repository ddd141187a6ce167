"""Request limits: API throttles shared by every web process, and the login lockout answer.

Throttle state lives in the default cache (Redis, see ``CACHES``) so that every gunicorn
process counts the same requests. A cache outage must not turn every API call into an error:
the throttles then fail open (the request is allowed and a warning is logged).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import escape
from rest_framework import throttling
from rest_framework.settings import api_settings

from core.client import client_ip

__all__ = ["client_ip"]  # AXES_CLIENT_IP_CALLABLE names it here

if TYPE_CHECKING:  # rest_framework.views imports the throttle classes: no cycle at run time
    from rest_framework.request import Request
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)

# At most one warning per process this often while the cache is unreachable.
_WARNING_INTERVAL_SECONDS = 30.0
_last_warning = 0.0


def _warn_cache_unavailable(exc: Exception) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= _WARNING_INTERVAL_SECONDS:
        _last_warning = now
        logger.warning("API throttling is off: the cache is unreachable (%s)", exc)


class FailOpenRateThrottle(throttling.SimpleRateThrottle):
    """A rate throttle that reads its rate at each request and allows it if the cache fails.

    DRF binds ``THROTTLE_RATES`` when its module is imported; reading ``api_settings`` here
    lets a changed ``REST_FRAMEWORK`` setting (tests, reloads) take effect. A rate of ``None``
    (an empty variable) turns the throttle off.
    """

    def get_rate(self) -> str | None:
        rates = api_settings.DEFAULT_THROTTLE_RATES or {}
        rate = rates.get(str(self.scope))
        return str(rate) if rate else None

    def allow_request(self, request: Request, view: APIView) -> bool:
        try:
            return bool(super().allow_request(request, view))
        except Exception as exc:
            _warn_cache_unavailable(exc)
            return True


class AnonRateThrottle(FailOpenRateThrottle, throttling.AnonRateThrottle):
    """Anonymous requests, per client address (``API_THROTTLE_ANON``)."""

    scope = "anon"


class UserRateThrottle(FailOpenRateThrottle, throttling.UserRateThrottle):
    """Authenticated requests, per user (``API_THROTTLE_USER``)."""

    scope = "user"


class WalletCreateRateThrottle(FailOpenRateThrottle, throttling.UserRateThrottle):
    """Wallet creation, per user (``API_THROTTLE_WALLET_CREATE``): each one is a new key."""

    scope = "wallet_create"


class WebhookResendRateThrottle(FailOpenRateThrottle, throttling.UserRateThrottle):
    """Webhook resends, per user (``API_THROTTLE_WEBHOOK_RESEND``): each one is a request to
    the user's endpoint made by a worker shared with everyone's deliveries."""

    scope = "webhook_resend"


_LOCKOUT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in locked | auto-pay</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto;">
<h1>Sign-in locked</h1>
<p>Too many failed sign-in attempts for this account from your address.</p>
<p>{wait}</p>
<p>An operator can lift the lock at once: <code>manage.py axes_reset_username USERNAME</code>
or the "Access attempts" page of the admin.</p>
</body></html>
"""


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: Any = None
) -> HttpResponse:
    """``AXES_LOCKOUT_CALLABLE``: the API's error envelope under /api/, a plain page elsewhere."""
    cool_off = settings.AXES_COOLOFF_TIME
    seconds = int(cool_off.total_seconds()) if cool_off else 0
    if seconds:
        minutes = max(1, round(seconds / 60))
        wait = f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
    else:
        wait = "An operator has to unlock the account."
    message = f"Too many failed login attempts: this account is locked. {wait}"
    status = int(getattr(settings, "AXES_HTTP_RESPONSE_CODE", 429))
    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse({"success": False, "error": message}, status=status)
    else:
        response = HttpResponse(_LOCKOUT_PAGE.format(wait=escape(wait)), status=status)
    if seconds:
        response["Retry-After"] = str(seconds)
    return response
