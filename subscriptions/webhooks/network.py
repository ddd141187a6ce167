"""Where a webhook may be sent: never to this machine's or its network's private services.

An endpoint's host is resolved and every address it resolves to must be public (not loopback,
private, link-local, carrier-grade NAT, multicast, reserved, or a cloud metadata address);
``WEBHOOK_ALLOW_PRIVATE_NETWORKS=true`` lifts that for development. It is checked when the
endpoint is saved and again at every send, and the request goes to the address that was
checked (no second lookup an attacker's DNS could answer differently), without redirects.

An IPv6 address that carries an IPv4 one (IPv4-mapped and -compatible, NAT64, 6to4, Teredo)
reaches that IPv4 address through a translator or a tunnel: it is judged by what it carries.
The parsing and resolution here are also those of x402 HTTP resource URLs
(``subscriptions.resources``).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from django.conf import settings

from core.errors import ServiceError

# Metadata services; most are link-local or private already, listed so they never pass.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)


# RFC 6052 NAT64 prefixes: the well-known one and the local-use one.
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
# IPv4-compatible addresses (deprecated, still routed by some stacks): ::a.b.c.d.
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class UrlRefused(ServiceError):
    """A URL the server will not request (form, credentials, or where it leads)."""

    code = "url_refused"


class WebhookUrlRefused(UrlRefused):
    """The URL may not receive webhooks (scheme, credentials, or a non-public address)."""

    code = "webhook_url_refused"


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        """The Host header of a request sent to one of ``addresses``."""
        default_port = 443 if self.scheme == "https" else 80
        return self.host if self.port == default_port else f"{self.host}:{self.port}"


def private_networks_allowed() -> bool:
    return bool(getattr(settings, "WEBHOOK_ALLOW_PRIVATE_NETWORKS", False))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses a packet to ``ip`` may reach (none for a plain IPv6 address)."""
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip.teredo is not None:
        return ip.teredo  # (server, client)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip in NAT64_WELL_KNOWN or ip in IPV4_COMPATIBLE:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip in NAT64_LOCAL_USE:
        # A /48 prefix: the IPv4 address is split around the reserved octet (bits 64-71).
        packed = ip.packed
        return (ipaddress.IPv4Address(packed[6:8] + packed[9:11]),)
    return ()


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast and ip not in METADATA_ADDRESSES


def address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded:
            return all(_is_public(inner) for inner in embedded)
    return _is_public(ip)


def url_destination(url: str, *, schemes: tuple[str, ...], scheme_hint: str = "") -> Destination:
    """``url``'s scheme, host, port and path (no addresses yet); raises UrlRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"Not a valid URL: {exc}.") from exc
    if parts.scheme not in schemes:
        raise UrlRefused(f"The URL must use {' or '.join(schemes)}{scheme_hint}.")
    if parts.username or parts.password:
        raise UrlRefused("The URL must not carry credentials.")
    host = parts.hostname or ""
    if not host:
        raise UrlRefused("The URL has no host.")
    port = port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(parts.scheme, host, port, path, ())


def resolved_addresses(host: str, port: int) -> tuple[str, ...]:
    """Every address ``host`` resolves to, once; raises UrlRefused when there is none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"The host {host!r} cannot be resolved.") from exc
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UrlRefused(f"The host {host!r} cannot be resolved.")
    return addresses


def webhook_destination(url: str, *, resolve: bool = True) -> Destination:
    """The checked destination of ``url``; raises WebhookUrlRefused.

    ``resolve=False`` (saving an endpoint in development mode) checks the URL's form only.
    """
    allowed_schemes = ("https", "http") if private_networks_allowed() else ("https",)
    try:
        destination = url_destination(
            url,
            schemes=allowed_schemes,
            scheme_hint="" if private_networks_allowed() else " (http only in development)",
        )
        if not resolve and private_networks_allowed():
            return destination
        addresses = resolved_addresses(destination.host, destination.port)
    except UrlRefused as exc:
        raise WebhookUrlRefused(exc.message) from exc
    if not private_networks_allowed():
        refused = [address for address in addresses if not address_is_public(address)]
        if refused:
            raise WebhookUrlRefused(
                f"The host {destination.host!r} resolves to a loopback, private, link-local or "
                f"metadata address ({refused[0]}); webhooks go to public addresses only."
            )
    return replace(destination, addresses=addresses)
