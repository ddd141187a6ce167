"""Where a webhook may be sent: never to this machine's or its network's private services.

An endpoint's host is resolved and every address it resolves to must be public (not loopback,
private, link-local, carrier-grade NAT, multicast, reserved, or a cloud metadata address);
``WEBHOOK_ALLOW_PRIVATE_NETWORKS=true`` lifts that for development. It is checked when the
endpoint is saved and again at every send, and the request goes to the address that was
checked (no second lookup an attacker's DNS could answer differently), without redirects.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from core.errors import ServiceError

# Metadata services; most are link-local or private already, listed so they never pass.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)


class WebhookUrlRefused(ServiceError):
    """The URL may not receive webhooks (scheme, credentials, or a non-public address)."""

    code = "webhook_url_refused"


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def private_networks_allowed() -> bool:
    return bool(getattr(settings, "WEBHOOK_ALLOW_PRIVATE_NETWORKS", False))


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast and ip not in METADATA_ADDRESSES


def webhook_destination(url: str, *, resolve: bool = True) -> Destination:
    """The checked destination of ``url``; raises WebhookUrlRefused.

    ``resolve=False`` (saving an endpoint in development mode) checks the URL's form only.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"Not a valid URL: {exc}.") from exc
    allowed_schemes = ("https", "http") if private_networks_allowed() else ("https",)
    if parts.scheme not in allowed_schemes:
        raise WebhookUrlRefused(
            "The URL must use https"
            + (" or http." if private_networks_allowed() else " (http only in development).")
        )
    if parts.username or parts.password:
        raise WebhookUrlRefused("The URL must not carry credentials.")
    host = parts.hostname or ""
    if not host:
        raise WebhookUrlRefused("The URL has no host.")
    port = port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not resolve and private_networks_allowed():
        return Destination(parts.scheme, host, port, path, ())
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlRefused(f"The host {host!r} cannot be resolved.") from exc
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise WebhookUrlRefused(f"The host {host!r} cannot be resolved.")
    if not private_networks_allowed():
        refused = [address for address in addresses if not address_is_public(address)]
        if refused:
            raise WebhookUrlRefused(
                f"The host {host!r} resolves to a loopback, private, link-local or metadata "
                f"address ({refused[0]}); webhooks go to public addresses only."
            )
    return Destination(parts.scheme, host, port, path, addresses)
