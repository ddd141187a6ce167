"""Each configured network's state for /health and /metrics: is its RPC answering, and at
which block. Probed with a short timeout (AUTOPAY_HEALTH_TIMEOUT_SECONDS), each network on its
own: one unreachable network is reported as such and delays only its own payments."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from web3 import Web3

from core.networks import NetworkConfig, network_registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkStatus:
    network: str
    chain_id: int
    reachable: bool
    block_number: int | None
    chain_id_matches: bool
    token_address: str

    def as_dict(self) -> dict[str, object]:
        return {
            "chainId": self.chain_id,
            # RPC URLs are not shown: they often carry a provider's API key.
            "rpc": "connected" if self.reachable else "unreachable",
            "blockNumber": self.block_number,
            "chainIdMatches": self.chain_id_matches,
            "token": self.token_address,
        }


def _probe(network: NetworkConfig) -> NetworkStatus:
    timeout = settings.AUTOPAY_HEALTH_TIMEOUT_SECONDS
    for url in network.rpc_urls:
        try:
            w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
            block = int(w3.eth.block_number)
            chain_id = int(w3.eth.chain_id)
        except Exception:
            logger.info("network %s: an RPC URL does not answer", network.network)
            continue
        return NetworkStatus(
            network.network,
            network.chain_id,
            True,
            block,
            chain_id == network.chain_id,
            network.token_address,
        )
    return NetworkStatus(
        network.network, network.chain_id, False, None, False, network.token_address
    )


def networks_status() -> dict[str, NetworkStatus]:
    """Every configured network, probed side by side."""
    networks = list(network_registry().values())
    with ThreadPoolExecutor(max_workers=max(len(networks), 1)) as pool:
        statuses = list(pool.map(_probe, networks))
    return {status.network: status for status in statuses}


def networks_report() -> dict[str, dict[str, object]]:
    """/health's ``networks``: each network's RPC state and head block."""
    return {name: status.as_dict() for name, status in networks_status().items()}
