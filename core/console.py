"""What people read in the operator console (admin pages, dashboard): one way to write an
amount, a time, an age, a Unix timestamp, a JSON document and a link to a block explorer.

Amounts are exact: the token's decimals (``7.500000 USDC``), never a float and never the 18
places the column stores. Times are UTC to the second.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from core.networks import explorer_link, token_symbol


def money_text(amount: Decimal | None, *, decimals: int, network: str) -> str:
    """``7.500000 USDC``: the token's decimals and the network's token symbol."""
    if amount is None:
        return ""
    exact = format(Decimal(amount).quantize(Decimal(1).scaleb(-decimals)), "f")
    return f"{exact} {token_symbol(network)}"


def atomic_money_text(value: int | None, *, decimals: int, network: str) -> str:
    """An amount in atomic units (a signed authorization's ``value``) as ``money_text``."""
    if value is None:
        return ""
    return money_text(Decimal(value).scaleb(-decimals), decimals=decimals, network=network)


def age_text(seconds: float | None, *, coarse: bool = False) -> str:
    """A duration for people: '45 s', '12 min 5 s', '3 h 20 min', '2 d 4 h' (coarse: the
    largest unit only, '12 min', for a list column)."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d" if coarse else f"{days} d {hours} h"
    if hours:
        return f"{hours} h" if coarse else f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min" if coarse else f"{minutes} min {secs} s"
    return f"{secs} s"


def time_text(value: datetime | None) -> str:
    """``2026-05-01 10:00:01 UTC``."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago_text(value: datetime | None, *, now: datetime | None = None, coarse: bool = False) -> str:
    """``12 min 5 s ago`` (``in 3 h 0 min`` for a time still to come)."""
    if value is None:
        return ""
    seconds = ((now or timezone.now()) - value).total_seconds()
    if seconds < 0:
        return f"in {age_text(-seconds, coarse=coarse)}"
    return f"{age_text(seconds, coarse=coarse)} ago"


def time_with_age(value: datetime | None) -> SafeString | str:
    """The time in UTC with its age underneath, for a record's page."""
    if value is None:
        return "-"
    return format_html(
        '{} <span class="autopay-quiet">({})</span>', time_text(value), ago_text(value)
    )


def unix_time_text(value: int | None) -> str:
    """A Unix timestamp (EIP-3009 ``validAfter``/``validBefore``) as a UTC date, the number
    after it (what was signed)."""
    if value is None:
        return ""
    try:
        moment = datetime.fromtimestamp(int(value), tz=UTC)
    except (OverflowError, OSError, ValueError):
        return str(value)
    return f"{time_text(moment)} ({value})"


def json_block(value: Any) -> SafeString:
    """A JSON document indented and wrapped in the page (never one clipped line)."""
    if value in (None, "", {}, []):
        return format_html('<span class="autopay-quiet">{}</span>', "(empty)")
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="autopay-json">{}</pre>', text)


def short_hash(value: str) -> str:
    """``0x1234ab…3e21``: enough to recognise, short enough for a list (the whole hash is
    the title, and searchable)."""
    return f"{value[:8]}…{value[-4:]}" if len(value) > 16 else value


def transaction_link(network: str, transaction_hash: str, *, short: bool = True) -> SafeString:
    """A transaction hash, linked to the network's explorer when it has one."""
    if not transaction_hash:
        return format_html("{}", "")
    text = short_hash(transaction_hash) if short else transaction_hash
    url = explorer_link(network, "tx", transaction_hash)
    if not url:
        return format_html('<code title="{}">{}</code>', transaction_hash, text)
    return format_html(
        '<a href="{}" target="_blank" rel="noopener noreferrer" title="{}"><code>{}</code></a>',
        url,
        transaction_hash,
        text,
    )


def address_link(network: str, address: str) -> SafeString:
    """An address, linked to the network's explorer when it has one."""
    url = explorer_link(network, "address", address)
    if not url:
        return format_html("<code>{}</code>", address)
    return format_html(
        '<a href="{}" target="_blank" rel="noopener noreferrer"><code>{}</code></a>', url, address
    )


def status_badge(status: str, label: str | None = None) -> SafeString:
    """A status as a coloured badge (the colours are in templates/admin/base_site.html)."""
    return format_html(
        '<span class="autopay-badge autopay-badge-{}">{}</span>', status, label or status
    )


def age_cell(value: datetime) -> SafeString:
    """A list's age column: '12 min ago', the exact time in UTC on hover."""
    return format_html('<span title="{}">{}</span>', time_text(value), ago_text(value, coarse=True))


# Characters of a name in a list column (the whole name is the link's title).
NAME_SHOWN = 18


def short_link(url: str, prefix: str, name: str) -> SafeString:
    """``#7 Pro plan with a l…`` linking to ``url``, for a list column."""
    return format_html(
        '<a href="{}" title="{}">{} {}</a>', url, name, prefix, Truncator(name).chars(NAME_SHOWN)
    )


def date_cell(value: datetime | None) -> SafeString:
    """A list's date column: the day, the exact time in UTC on hover."""
    if value is None:
        return format_html("{}", "-")
    return format_html(
        '<span title="{}">{}</span>', time_text(value), value.astimezone(UTC).date().isoformat()
    )
