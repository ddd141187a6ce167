"""The relayers page of the operator console: each network's gas-paying wallets with their ETH
balance, nonce and transactions still pending, and whether the pool uses them.

Read from the chain while the page renders, so every request has a short timeout
(AUTOPAY_HEALTH_TIMEOUT_SECONDS) and no retry; a network that does not answer shows "unknown"
and the page still renders (never a 500 for an RPC outage).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.safestring import SafeString
from eth_account import Account
from web3 import Web3

from autopay.chain.relayer import relayer_keys, relayers_out_of_pool
from core.console import address_link
from core.networks import NetworkConfig, network_registry
from jobs.console_pages import ConsolePage, console_pages

logger = logging.getLogger(__name__)

WEI_PER_ETHER = Decimal(10**18)


@dataclass(frozen=True)
class RelayerRow:
    network: str
    address: str
    link: SafeString
    balance_wei: int | None  # None: unknown (the chain did not answer)
    nonce: int | None
    pending: int | None
    in_pool: bool

    @property
    def balance_text(self) -> str:
        if self.balance_wei is None:
            return "unknown"
        return f"{format((Decimal(self.balance_wei) / WEI_PER_ETHER).normalize(), 'f')} ETH"

    @property
    def low(self) -> bool:
        return (
            self.balance_wei is not None
            and Decimal(self.balance_wei) / WEI_PER_ETHER < settings.RELAYER_MIN_BALANCE_ETH
        )


def _addresses(network: NetworkConfig) -> list[str]:
    addresses = []
    for key in relayer_keys(network):
        try:
            addresses.append(str(Account.from_key(key).address))
        except (ValueError, TypeError):
            continue  # not a key: /health and the configuration check say so
    return addresses


def relayer_rows(network: NetworkConfig) -> list[RelayerRow]:
    """The pool of ``network`` as the chain sees it now; after the first request that fails,
    the rest of the network's figures are "unknown" (one timeout is enough to wait for)."""
    w3 = Web3(
        Web3.HTTPProvider(
            network.rpc_url,
            request_kwargs={"timeout": settings.AUTOPAY_HEALTH_TIMEOUT_SECONDS},
            exception_retry_configuration=None,
        )
    )
    reachable = True
    rows = []
    addresses = _addresses(network)
    # Taken out after a low balance or a refusal for funds (autopay.chain.relayer).
    out = relayers_out_of_pool(network.network, addresses)
    for address in addresses:
        balance = nonce = pending = None
        if reachable:
            try:
                checksummed = Web3.to_checksum_address(address)
                balance = int(w3.eth.get_balance(checksummed))
                nonce = int(w3.eth.get_transaction_count(checksummed, "latest"))
                pending = int(w3.eth.get_transaction_count(checksummed, "pending")) - nonce
            except Exception as exc:  # any failure of the chain read: shown as unknown
                logger.warning(
                    "relayer %s on %s unreadable: %s", address, network.network, type(exc).__name__
                )
                reachable = False
                balance = nonce = pending = None
        rows.append(
            RelayerRow(
                network=network.network,
                address=address,
                link=address_link(network.network, address),
                balance_wei=balance,
                nonce=nonce,
                pending=pending,
                in_pool=address not in out,
            )
        )
    return rows


def relayers_view(request: HttpRequest, *, admin_site: AdminSite, **kwargs: Any) -> HttpResponse:
    remote = bool(settings.X402_FACILITATOR_URL)
    networks = [] if remote else list(network_registry().values())
    context = {
        **admin_site.each_context(request),
        "title": "Relayers",
        "remote_facilitator": remote,
        "networks": [(network.network, relayer_rows(network)) for network in networks],
        "minimum_eth": settings.RELAYER_MIN_BALANCE_ETH,
        "pages": console_pages(),
    }
    return TemplateResponse(request, "admin/autopay/relayers.html", context)


RELAYERS_PAGE = ConsolePage("relayers/", "relayers", "Relayers", relayers_view)
