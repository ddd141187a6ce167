"""Who the client is: the address the API throttles, axes and the audit log all see.

Importable before Django is set up (``core.audit`` is, for ``manage.py``).
"""

from __future__ import annotations

import ipaddress

from django.http import HttpRequest
from rest_framework.settings import api_settings


def client_ip(request: HttpRequest) -> str:
    """The client's address (``API_NUM_PROXIES``): X-Forwarded-For is read only behind that
    many proxies of ours, from the right, since anything left of them is the client's word."""
    forwarded = request.headers.get("x-forwarded-for")
    remote_addr = str(request.META.get("REMOTE_ADDR") or "")
    num_proxies = api_settings.NUM_PROXIES or 0
    if not num_proxies or not forwarded:
        return remote_addr
    addresses = forwarded.split(",")
    return addresses[-min(num_proxies, len(addresses))].strip()


def client_address(request: HttpRequest) -> str | None:
    """``client_ip`` if it is an IP address (a proxy may pass on garbage), else None."""
    try:
        return str(ipaddress.ip_address(client_ip(request).strip("[]")))
    except ValueError:
        return None
