"""Deploy the project's USDC-like token (AutoPayUSD) to CHAIN_RPC_URL and print its address."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from autopay.chain.client import get_web3
from autopay.devtools.contracts import deploy_token
from autopay.devtools.management.commands._chain import minter_key


class Command(BaseCommand):
    help = "Deploy the AutoPayUSD token (EIP-3009, EIP-2612, 6 decimals) and print its address."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--name", default=settings.TOKEN_EIP712_NAME)
        parser.add_argument("--symbol", default="USDC")
        parser.add_argument("--eip712-version", default=settings.TOKEN_EIP712_VERSION)
        parser.add_argument("--key", help="deployer key (default TOKEN_MINTER_PRIVATE_KEY)")

    def handle(self, *args: Any, **options: Any) -> None:
        w3 = get_web3()
        if not w3.is_connected():
            raise CommandError(f"cannot reach the chain at {settings.CHAIN_RPC_URL}")
        address = deploy_token(
            w3,
            minter_key(options["key"]),
            name=options["name"],
            symbol=options["symbol"],
            eip712_version=options["eip712_version"],
        )
        self.stdout.write(address)
