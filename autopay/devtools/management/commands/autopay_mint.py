"""Mint test tokens to an address (development and test chains)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from eth_utils import is_checksum_address, to_checksum_address

from autopay.chain.client import get_web3
from autopay.devtools.contracts import mint
from autopay.devtools.management.commands._chain import format_amount, minter_key, parse_amount


class Command(BaseCommand):
    help = "Mint AMOUNT tokens (decimal, e.g. 100 or 12.5) to ADDRESS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("address")
        parser.add_argument("amount")
        parser.add_argument("--token", default=None, help="token address (default TOKEN_ADDRESS)")
        parser.add_argument("--key", help="minter key (default TOKEN_MINTER_PRIVATE_KEY)")

    def handle(self, *args: Any, **options: Any) -> None:
        token = options["token"] or settings.TOKEN_ADDRESS
        if not token:
            raise CommandError("No token: set TOKEN_ADDRESS or pass --token.")
        address = options["address"]
        if not is_checksum_address(address):
            try:
                address = to_checksum_address(address)
            except ValueError as exc:
                raise CommandError(f"{address!r} is not an address") from exc
        atomic = parse_amount(options["amount"])
        tx_hash = mint(get_web3(), token, minter_key(options["key"]), address, atomic)
        tx_hex = "0x" + bytes(tx_hash).hex().removeprefix("0x")
        self.stdout.write(f"minted {format_amount(atomic)} to {address} in {tx_hex}")
