"""Deploy the project's aggregate3 contract (AutoPayMulticall) to CHAIN_RPC_URL and print its
address: CHAIN_MULTICALL_ADDRESS on a local chain, where no canonical Multicall3 exists."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from autopay.chain.client import get_web3
from autopay.devtools.contracts import deploy_multicall
from autopay.devtools.management.commands._chain import minter_key


class Command(BaseCommand):
    help = "Deploy AutoPayMulticall (Multicall3's aggregate3, for batch settlement); print it."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--key", help="deployer key (default TOKEN_MINTER_PRIVATE_KEY)")

    def handle(self, *args: Any, **options: Any) -> None:
        w3 = get_web3()
        if not w3.is_connected():
            raise CommandError(f"cannot reach the chain at {settings.CHAIN_RPC_URL}")
        self.stdout.write(deploy_multicall(w3, minter_key(options["key"])))
