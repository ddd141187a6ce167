"""Payer wallets: generated server-side, key encrypted at rest, only the address ever shown."""

from __future__ import annotations

from typing import Any

from eth_account import Account

from autopay.custody import encrypt_private_key
from autopay.models import PayerWallet


def wallet_create(*, owner: Any, label: str = "") -> PayerWallet:
    """Generate a new payer key; store it encrypted and return the wallet (address only)."""
    account = Account.create()
    return PayerWallet.objects.create(
        owner=owner,
        label=label,
        address=account.address,
        encrypted_private_key=encrypt_private_key(bytes(account.key)),
    )
