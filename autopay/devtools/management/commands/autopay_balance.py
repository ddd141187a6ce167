"""Show an address's token and native (gas) balances."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from eth_utils import to_checksum_address

from autopay.chain.client import ChainUnavailable, call_rpc, get_web3, token_balance
from autopay.devtools.management.commands._chain import format_amount


class Command(BaseCommand):
    help = "Show the token and ETH balances of ADDRESS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("address", nargs="+")
        parser.add_argument("--token", default=None, help="token address (default TOKEN_ADDRESS)")

    def handle(self, *args: Any, **options: Any) -> None:
        token = options["token"] or settings.TOKEN_ADDRESS
        w3 = get_web3()
        for raw in options["address"]:
            try:
                address = to_checksum_address(raw)
            except ValueError as exc:
                raise CommandError(f"{raw!r} is not an address") from exc
            try:
                native = call_rpc(w3.eth.get_balance, address)
                tokens = token_balance(token, address) if token else None
            except ChainUnavailable as exc:
                raise CommandError(str(exc)) from exc
            line = f"{address}  eth={native / 10**18:.6f}"
            if tokens is not None:
                line += f"  token={format_amount(tokens)}"
            self.stdout.write(line)
