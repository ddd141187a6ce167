"""Helpers shared by the chain commands: which key deploys and mints, and amount parsing."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.management.base import CommandError

from autopay.devtools.anvil import ANVIL_DEV_KEYS

# anvil's default, geth's dev chain, and bin/run's second local chain.
LOCAL_CHAIN_IDS = {31337, 1337, 31338}


def minter_key(explicit: str | None) -> str:
    """The deployer/minter key: --key, else TOKEN_MINTER_PRIVATE_KEY, else (local chain only)
    anvil's public dev account 0."""
    key = explicit or getattr(settings, "TOKEN_MINTER_PRIVATE_KEY", "")
    if key:
        return key
    if settings.CHAIN_ID in LOCAL_CHAIN_IDS:
        return ANVIL_DEV_KEYS[0]
    raise CommandError(
        "Set TOKEN_MINTER_PRIVATE_KEY or pass --key: anvil's dev key is only used on a local chain."
    )


def parse_amount(text: str) -> int:
    """A decimal token amount ("12.5") to atomic units, exactly."""
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:
        raise CommandError(f"{text!r} is not a decimal amount") from exc
    scaled = amount.scaleb(settings.TOKEN_DECIMALS)
    if amount <= 0 or scaled != scaled.to_integral_value():
        raise CommandError(
            f"amount must be positive with at most {settings.TOKEN_DECIMALS} decimal places"
        )
    return int(scaled)


def format_amount(atomic: int) -> str:
    value = Decimal(atomic).scaleb(-settings.TOKEN_DECIMALS)
    return format(value.quantize(Decimal(1).scaleb(-settings.TOKEN_DECIMALS)), "f")
