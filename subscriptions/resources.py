"""Where an x402 HTTP ``resource_url`` may lead: the operator's allow-list, every time.

``AUTOPAY_RESOURCE_ALLOWED_HOSTS`` lists ``host`` (any port), ``host:port`` or ``[v6]:port``
entries, or ``*`` (any host). A URL passes when its host and port match an entry; then every
address its host resolves to must be public, unless that address (with the port) is itself
an entry: a name on the list, or ``*``, never leads to a loopback or private service the
operator did not name. The check runs when a subscription is saved (without resolving) and at
every request the worker makes, with the URL resolved once and the request sent to the
address that was checked (the webhook guard's parsing and resolution), so removing an entry
stops existing subscriptions at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from django.conf import settings

from subscriptions.webhooks.network import (
    Destination,
    UrlRefused,
    address_is_public,
    resolved_addresses,
    url_destination,
)

SCHEMES = ("https", "http")


class ResourceUrlRefused(UrlRefused):
    """The resource URL is not one this deployment's workers may request."""

    code = "resource_url_refused"


def _normalized_host(host: str) -> str:
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def allowed_entries() -> list[tuple[str, int | None]]:
    """The allow-list as (host, port or None for any port)."""
    entries: list[tuple[str, int | None]] = []
    for raw in settings.AUTOPAY_RESOURCE_ALLOWED_HOSTS:
        entry = raw.strip()
        if not entry:
            continue
        host, port = entry, None
        if entry.startswith("["):  # [v6] or [v6]:port
            host, _, rest = entry[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        elif entry.count(":") == 1:
            name, _, digits = entry.partition(":")
            if digits.isdigit():
                host, port = name, int(digits)
        entries.append((_normalized_host(host), port))
    return entries


def _named(host: str, port: int, entries: list[tuple[str, int | None]], *, wildcard: bool) -> bool:
    host = _normalized_host(host)
    return any(
        (name == host or (wildcard and name == "*")) and (allowed is None or allowed == port)
        for name, allowed in entries
    )


def resource_destination(url: str, *, resolve: bool = True) -> Destination:
    """The checked destination of ``url``; raises ResourceUrlRefused.

    ``resolve=False`` (saving a subscription) checks the form and the allow-list only.
    """
    try:
        destination = url_destination(url, schemes=SCHEMES)
    except UrlRefused as exc:
        raise ResourceUrlRefused(exc.message) from exc
    entries = allowed_entries()
    if not _named(destination.host, destination.port, entries, wildcard=True):
        raise ResourceUrlRefused(
            f"Host {destination.host}:{destination.port} is not allowed for resource_url on "
            "this deployment (AUTOPAY_RESOURCE_ALLOWED_HOSTS)."
        )
    if not resolve:
        return destination
    try:
        addresses = resolved_addresses(destination.host, destination.port)
    except UrlRefused as exc:
        raise ResourceUrlRefused(exc.message) from exc
    for address in addresses:
        if not address_is_public(address) and not _named(
            address, destination.port, entries, wildcard=False
        ):
            raise ResourceUrlRefused(
                f"Host {destination.host} resolves to {address}, a non-public address that "
                "AUTOPAY_RESOURCE_ALLOWED_HOSTS does not name."
            )
    return replace(destination, addresses=addresses)
