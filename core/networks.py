"""The networks one deployment pays on: a registry from the environment, and the network a
payment is being made on (a context, so that the chain client, the relayer and the rails of
one job all talk to that payment's chain).

Why settings and not an operator-editable model: a network carries secrets (its relayer key)
and endpoints that every worker must agree on before it takes a job; the environment is where
the other secrets live (twelve-factor), it is read once per process, and a typo cannot be
saved half-way through a running deployment. Changing networks is a deploy, as changing the
token or the relayer key already is.

``AUTOPAY_NETWORKS`` (JSON, a list of objects) describes each network::

    [{"network": "eip155:8453", "rpc_urls": ["https://base.a", "https://base.b"],
      "token_address": "0x8335…", "token_name": "USD Coin", "token_version": "2",
      "relayer_private_key": "0x…", "confirmations": 2, "finality_depth": 64,
      "aggregate3": "0xcA11bde05977b3631167028862bE2a173976CA11", "max_rpc_per_second": 25,
      "token_symbol": "USDC", "explorer_url": "https://basescan.org"}, …]

Unset, the one network of CHAIN_* / TOKEN_* / RELAYER_PRIVATE_KEY is the registry (as before).
Missing fields take those settings as defaults.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Multicall3 is deployed at this address on every major EVM network.
MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"
# An RPC URL that failed is skipped for this long while another URL of its network is tried.
RPC_FALLBACK_SECONDS = 30.0


@dataclass(frozen=True)
class NetworkConfig:
    network: str  # CAIP-2, eip155:<chain id>
    chain_id: int
    rpc_urls: tuple[str, ...]
    token_address: str
    token_name: str
    token_version: str
    token_decimals: int
    relayer_private_key: str
    confirmations: int
    finality_depth: int
    aggregate3: str
    # Requests per second this deployment may send to the network's RPC provider (every
    # worker and machine together; 0: no limit). Real providers cap it.
    max_rpc_per_second: float = 0.0
    # What people read: the token's symbol next to amounts, and the block explorer that
    # transactions and addresses link to ("" = no links).
    token_symbol: str = ""
    explorer_url: str = ""

    def __repr__(self) -> str:
        # Never the relayer key, even in a traceback.
        return f"<NetworkConfig {self.network} {self.rpc_urls[0] if self.rpc_urls else '-'}>"

    @property
    def rpc_url(self) -> str:
        """The URL to use now: the first one not marked down (else the first)."""
        now = time.monotonic()
        with _down_lock:
            for url in self.rpc_urls:
                if _down_until.get(url, 0.0) <= now:
                    return url
        return self.rpc_urls[0]


_down_until: dict[str, float] = {}
_down_lock = threading.Lock()


def rpc_failed(url: str) -> None:
    """``url`` did not answer: its network's other URLs are preferred for a while."""
    with _down_lock:
        _down_until[url] = time.monotonic() + RPC_FALLBACK_SECONDS


def _default(entry: dict[str, Any]) -> NetworkConfig:
    network = str(entry.get("network") or settings.CHAIN_NETWORK)
    try:
        chain_id = int(entry.get("chain_id") or network.split(":", 1)[1])
    except (IndexError, ValueError) as exc:
        raise ImproperlyConfigured(f"AUTOPAY_NETWORKS: {network!r} is not eip155:<id>") from exc
    urls = entry.get("rpc_urls") or [entry.get("rpc_url") or settings.CHAIN_RPC_URL]
    single = network == settings.CHAIN_NETWORK
    return NetworkConfig(
        network=network,
        chain_id=chain_id,
        rpc_urls=tuple(str(url) for url in urls),
        token_address=str(entry.get("token_address") or (settings.TOKEN_ADDRESS if single else "")),
        token_name=str(entry.get("token_name") or settings.TOKEN_EIP712_NAME),
        token_version=str(entry.get("token_version") or settings.TOKEN_EIP712_VERSION),
        token_decimals=int(entry.get("token_decimals") or settings.TOKEN_DECIMALS),
        relayer_private_key=str(entry.get("relayer_private_key") or settings.RELAYER_PRIVATE_KEY),
        confirmations=int(entry.get("confirmations") or settings.CHAIN_CONFIRMATIONS),
        finality_depth=int(entry.get("finality_depth") or 0),
        aggregate3=str(entry.get("aggregate3") or MULTICALL3_ADDRESS),
        max_rpc_per_second=float(
            entry.get("max_rpc_per_second") or (settings.CHAIN_MAX_RPC_PER_SECOND if single else 0)
        ),
        token_symbol=str(entry.get("token_symbol") or settings.TOKEN_SYMBOL),
        explorer_url=str(
            entry.get("explorer_url") or (settings.CHAIN_EXPLORER_URL if single else "")
        ).rstrip("/"),
    )


def network_registry() -> dict[str, NetworkConfig]:
    """Every network this deployment pays on, by CAIP-2 id (the first is the default)."""
    entries = settings.AUTOPAY_NETWORKS or [{}]
    if not isinstance(entries, list):
        raise ImproperlyConfigured("AUTOPAY_NETWORKS must be a JSON list of networks")
    registry: dict[str, NetworkConfig] = {}
    for entry in entries:
        config = _default(dict(entry))
        registry[config.network] = config
    return registry


def network_config(network: str) -> NetworkConfig | None:
    return network_registry().get(network)


def token_symbol(network: str) -> str:
    """The symbol shown next to amounts of ``network`` (``TOKEN_SYMBOL`` for a network this
    deployment no longer lists: old rows stay readable)."""
    config = network_config(network)
    return config.token_symbol if config is not None else settings.TOKEN_SYMBOL


def explorer_link(network: str, kind: str, value: str) -> str:
    """The block explorer's page of a transaction (``kind="tx"``) or an address
    (``kind="address"``) on ``network``; "" when the network has no ``explorer_url``."""
    config = network_config(network)
    if config is None or not config.explorer_url or not value:
        return ""
    return f"{config.explorer_url}/{kind}/{value}"


_active: ContextVar[NetworkConfig | None] = ContextVar("autopay_network", default=None)


def active_network() -> NetworkConfig:
    """The network of the payment being made, else the default network (the first)."""
    config = _active.get()
    if config is not None:
        return config
    registry = network_registry()
    return registry.get(settings.CHAIN_NETWORK) or next(iter(registry.values()))


@contextmanager
def use_network(config: NetworkConfig) -> Iterator[NetworkConfig]:
    """Make ``config`` the network the chain client, relayer and rails use in this block."""
    token = _active.set(config)
    try:
        yield config
    finally:
        _active.reset(token)
