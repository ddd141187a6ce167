"""Pages of the operator console beside the dashboard, registered by the apps that own them.

The dashboard (this app) serves them under /admin/dashboard/ through the admin site (staff only,
login redirect, CSRF) and links them from every console page. An app above this one registers
its own (the relayers page reads the chain, which this app does not know).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.http import HttpResponse


@dataclass(frozen=True)
class ConsolePage:
    """A page: its route under /admin/dashboard/, URL name (``admin:autopay-<name>``), title
    and view (called with the request, ``admin_site`` and the route's arguments)."""

    route: str
    name: str
    title: str
    view: Callable[..., HttpResponse]


_PAGES: list[ConsolePage] = []


def console_page_register(page: ConsolePage) -> None:
    """Serve ``page`` under /admin/dashboard/ (once per name)."""
    if all(existing.name != page.name for existing in _PAGES):
        _PAGES.append(page)


def console_pages() -> list[ConsolePage]:
    return list(_PAGES)
