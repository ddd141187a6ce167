"""Are the relayers funded? Their ETH balances, for /health (503 below a threshold) and
/metrics. A relayer without ETH cannot pay for gas: every settlement would stop.

Asked of the chain with a short timeout (AUTOPAY_HEALTH_TIMEOUT_SECONDS) and remembered for
a few seconds per process, so that frequent probes cost one request per relayer at most every
BALANCE_CACHE_SECONDS. When the chain does not answer the balances are unknown, which does not
make the service unhealthy (an RPC outage is transient and jobs retry through it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from eth_account import Account
from web3 import Web3

from autopay.chain.relayer import relayer_keys, relayers_out_of_pool
from autopay.rails.authorization import checksum_address
from subscriptions.webhooks.models import EventType
from subscriptions.webhooks.services import operator_event_record

logger = logging.getLogger(__name__)

BALANCE_CACHE_SECONDS = 15.0
WEI_PER_ETH = Decimal(10) ** 18

_cache: dict[tuple[str, tuple[str, ...]], tuple[float, list[RelayerFunding]]] = {}


@dataclass(frozen=True)
class RelayerFunding:
    address: str
    balance_wei: int | None  # None: the chain did not answer

    @property
    def balance_eth(self) -> Decimal | None:
        return None if self.balance_wei is None else Decimal(self.balance_wei) / WEI_PER_ETH

    @property
    def low(self) -> bool:
        balance = self.balance_eth
        return balance is not None and balance < settings.RELAYER_MIN_BALANCE_ETH


def relayer_addresses() -> list[str]:
    """The pool's addresses (keys that are not valid keys are /health's other problem)."""
    addresses = []
    for key in relayer_keys():
        try:
            addresses.append(str(Account.from_key(key).address))
        except (ValueError, TypeError):
            continue
    return addresses


def relayer_funding() -> list[RelayerFunding]:
    """Each relayer's ETH balance; empty when payments do not use our relayers."""
    if settings.AUTOPAY_PAYMENT_RAIL != "x402" or settings.X402_FACILITATOR_URL:
        return []
    addresses = tuple(relayer_addresses())
    if not addresses:
        return []
    key = (settings.CHAIN_RPC_URL, addresses)
    now = time.monotonic()
    cached = _cache.get(key)
    if cached is not None and now - cached[0] < BALANCE_CACHE_SECONDS:
        return cached[1]
    w3 = Web3(
        Web3.HTTPProvider(
            settings.CHAIN_RPC_URL,
            request_kwargs={"timeout": settings.AUTOPAY_HEALTH_TIMEOUT_SECONDS},
            exception_retry_configuration=None,
        )
    )
    funding = []
    reachable = True
    for address in addresses:
        balance = None
        if reachable:
            try:
                balance = int(w3.eth.get_balance(checksum_address(address)))  # type: ignore[arg-type]
            except Exception as exc:
                logger.warning("relayer balance unavailable: %s", type(exc).__name__)
                reachable = False  # one timeout is enough to wait for
        funding.append(RelayerFunding(address, balance))
    _cache[key] = (now, funding)
    return funding


def relayer_unfunded_alert(network: str, address: str, reason: str) -> None:
    """A relayer left its pool: the operator hears of it (a ``relayer.unfunded`` event to
    staff endpoints); its work goes to the others meanwhile."""
    operator_event_record(
        type=EventType.RELAYER_UNFUNDED,
        data={
            "network": network,
            "address": address,
            "reason": reason[:500],
            "minimumEth": str(settings.RELAYER_MIN_BALANCE_ETH),
            "outOfPoolSeconds": settings.RELAYER_OUT_OF_POOL_SECONDS,
        },
    )


def relayers_health() -> tuple[dict[str, Any], bool]:
    """/health's "relayers" part and whether it is healthy: "low" (503) when a relayer holds
    less than RELAYER_MIN_BALANCE_ETH, "unknown" when the chain does not answer."""
    funding = relayer_funding()
    if not funding:
        return {"status": "not used"}, True
    if any(relayer.low for relayer in funding):
        status = "low"
    elif any(relayer.balance_wei is None for relayer in funding):
        status = "unknown"
    else:
        status = "ok"
    out = relayers_out_of_pool(settings.CHAIN_NETWORK, [relayer.address for relayer in funding])
    return {
        "status": status,
        "minimumEth": str(settings.RELAYER_MIN_BALANCE_ETH),
        # Taken out after a low balance or a refusal for funds; their work goes to the others.
        "outOfPool": sorted(out),
        "balances": [
            {
                "address": relayer.address,
                "balanceEth": None if relayer.balance_eth is None else str(relayer.balance_eth),
            }
            for relayer in funding
        ],
    }, status != "low"
