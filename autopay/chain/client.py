"""Chain access for the engine: one web3 per process, every call bounded by a timeout.

Transport failures surface as ChainUnavailable (transient); contract reverts as they are.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
import requests
from django.conf import settings
from eth_abi import encode
from eth_utils import keccak, to_checksum_address
from web3 import HTTPProvider, Web3
from web3.exceptions import (
    BlockNotFound,
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)

from autopay.chain.abi import (
    AUTHORIZATION_USED_TOPIC,
    EIP712_DOMAIN_TYPEHASH,
    ERC20_MINIMAL_ABI,
)
from core.networks import NetworkConfig, active_network, rpc_failed
from core.redis import get_redis
from subscriptions.errors import RpcUnavailable

logger = logging.getLogger(__name__)

_local = threading.local()


class ChainUnavailable(RpcUnavailable):
    """The chain's RPC endpoint could not be reached, or timed out."""


TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
    TimeExhausted,
)


def is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, TRANSPORT_ERRORS):
        return True
    if isinstance(exc, requests.exceptions.HTTPError):
        response = exc.response
        return response is None or response.status_code >= 500 or response.status_code == 429
    return False


# A token bucket per network, shared by every process through Redis: refilled at ``rate``
# tokens a second up to ``burst``; each request takes one. Returns 0 when it may go now, else
# how many milliseconds until a token is there. Every request is also counted per method.
_RPC_BUDGET_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
local rate = tonumber(ARGV[1])
if rate <= 0 then return 0 end
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now_ms
tokens = math.min(burst, tokens + (now_ms - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now_ms))
redis.call('PEXPIRE', KEYS[1], 60000)
return wait
"""


def rpc_calls_key(network: str) -> str:
    """The Redis hash counting every RPC request sent to ``network``, by method."""
    return f"autopay:rpc:calls:{network}"


def rpc_budget_take(*, network: str, per_second: float, method: str, wait_up_to: float) -> None:
    """Count one request to ``network`` and, under a budget, wait for its token (at most
    ``wait_up_to`` seconds: then ChainUnavailable, a transient fault the job waits out). When
    Redis does not answer the request goes (the provider's own limit is the last word)."""
    deadline = time.monotonic() + wait_up_to
    burst = max(per_second, 1.0)
    while True:
        try:
            wait_ms = int(
                get_redis().eval(
                    _RPC_BUDGET_SCRIPT,
                    2,
                    f"autopay:rpc:budget:{network}",
                    rpc_calls_key(network),
                    per_second,
                    burst,
                    method,
                )
            )
        except redis.RedisError:
            return
        if wait_ms <= 0:
            return
        if time.monotonic() + wait_ms / 1000 > deadline:
            raise ChainUnavailable(
                f"the RPC budget of {network} ({per_second:g} requests/s) is spent for now"
            )
        time.sleep(wait_ms / 1000)


class BudgetedHTTPProvider(HTTPProvider):
    """An HTTP provider that counts every request and keeps within its network's budget
    (``max_rpc_per_second``), whichever code sends it: the engine, the relayer, the rails,
    the confirmer and the sweeps all reach the chain through ``get_web3``."""

    def __init__(self, url: str, *, network: NetworkConfig, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._network = network.network
        self._per_second = network.max_rpc_per_second

    def _take(self, method: str) -> None:
        rpc_budget_take(
            network=self._network,
            per_second=self._per_second,
            method=method,
            wait_up_to=settings.CHAIN_RPC_TIMEOUT_SECONDS,
        )

    def make_request(self, method: Any, params: Any) -> Any:
        self._take(str(method))
        return super().make_request(method, params)

    def make_batch_request(self, batch_requests: Any) -> Any:
        for method, _params in batch_requests:
            self._take(str(method))
        return super().make_batch_request(batch_requests)


def get_web3(rpc_url: str | None = None) -> Web3:
    """A web3 bound to ``rpc_url`` (default: the active network's), cached per thread; its
    requests are counted and kept within the network's RPC budget."""
    network = active_network()
    url = rpc_url or network.rpc_url
    cache: dict[tuple[str, str], Web3] = getattr(_local, "web3", None) or {}
    _local.web3 = cache
    w3 = cache.get((network.network, url))
    if w3 is None:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        provider = BudgetedHTTPProvider(
            url,
            network=network,
            request_kwargs={"timeout": settings.CHAIN_RPC_TIMEOUT_SECONDS},
            session=session,
            exception_retry_configuration=None,
        )
        w3 = Web3(provider)
        cache[(network.network, url)] = w3
    return w3


def call_rpc(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a web3 call, turning transport failures and JSON-RPC errors that are not reverts
    (rate limits, range limits, node out of sync) into ChainUnavailable (transient)."""
    try:
        return function(*args, **kwargs)
    except (ContractLogicError, TransactionNotFound, BlockNotFound):
        raise
    except Exception as exc:
        error = rpc_error(exc)
        if error is None:
            raise
        if is_transport_error(exc):
            # The network's next RPC URL (if it has one) is tried by the next call.
            rpc_failed(active_network().rpc_url)
        raise error from exc


def rpc_error(exc: BaseException) -> ChainUnavailable | None:
    """The one classification of a failed RPC request: the node unreachable, timing out or
    answering 5xx/429, or a JSON-RPC error that is not a revert (rate limit, range limit,
    node out of sync) is ChainUnavailable (transient); anything else is not ours to classify."""
    if is_transport_error(exc):
        return ChainUnavailable(f"chain RPC unavailable: {type(exc).__name__}")
    if isinstance(exc, Web3RPCError):
        return ChainUnavailable(f"chain RPC error: {exc}")
    return None


def token_balance(token_address: str, owner: str, *, w3: Web3 | None = None) -> int:
    w3 = w3 or get_web3()
    token = w3.eth.contract(address=to_checksum_address(token_address), abi=ERC20_MINIMAL_ABI)
    return int(call_rpc(token.functions.balanceOf(to_checksum_address(owner)).call))


def authorization_used(
    token_address: str, authorizer: str, nonce: str, *, w3: Web3 | None = None
) -> bool:
    """EIP-3009 authorizationState: has this nonce been used (or canceled) by the payer?"""
    w3 = w3 or get_web3()
    token = w3.eth.contract(address=to_checksum_address(token_address), abi=ERC20_MINIMAL_ABI)
    call = token.functions.authorizationState(
        to_checksum_address(authorizer), bytes.fromhex(nonce[2:])
    )
    return bool(call_rpc(call.call))


def domain_separator(token_address: str, *, w3: Web3 | None = None) -> bytes | None:
    """The token's EIP-712 DOMAIN_SEPARATOR, or None when it has none."""
    w3 = w3 or get_web3()
    token = w3.eth.contract(address=to_checksum_address(token_address), abi=ERC20_MINIMAL_ABI)
    try:
        return bytes(call_rpc(token.functions.DOMAIN_SEPARATOR().call))
    except ChainUnavailable:
        raise
    except Exception:
        return None


def expected_domain_separator(
    *, name: str, version: str, chain_id: int, token_address: str
) -> bytes:
    """The EIP-712 domain separator we sign under (name, version, chain id, token)."""
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                EIP712_DOMAIN_TYPEHASH,
                keccak(text=name),
                keccak(text=version),
                chain_id,
                to_checksum_address(token_address),
            ],
        )
    )


# Providers cap eth_getLogs ranges; search in windows of this many blocks, newest first.
LOG_SEARCH_WINDOW = 5_000
# Without a recorded starting block, search this far back from the head.
LOG_SEARCH_DEFAULT_DEPTH = 200_000


def find_authorization_transaction(
    token_address: str,
    authorizer: str,
    nonce: str,
    *,
    from_block: int | None = None,
    w3: Web3 | None = None,
) -> tuple[str, int] | None:
    """The transaction (hash, block) that used ``nonce``, from its AuthorizationUsed event.

    Searches from ``from_block`` (the block recorded before the first signing) to the head in
    bounded windows, newest first.
    """
    w3 = w3 or get_web3()
    topics = [
        AUTHORIZATION_USED_TOPIC,
        "0x" + "0" * 24 + to_checksum_address(authorizer)[2:].lower(),
        nonce.lower(),
    ]
    head = block_number(w3=w3)
    start = max(from_block if from_block is not None else head - LOG_SEARCH_DEFAULT_DEPTH, 0)
    upper = head
    while upper >= start:
        lower = max(upper - LOG_SEARCH_WINDOW + 1, start)
        logs = call_rpc(
            w3.eth.get_logs,
            {
                "address": to_checksum_address(token_address),
                "fromBlock": lower,
                "toBlock": upper,
                "topics": topics,  # type: ignore[typeddict-item]
            },
        )
        if logs:
            log = logs[-1]
            tx_hash = "0x" + bytes(log["transactionHash"]).hex().removeprefix("0x")
            return tx_hash, int(log["blockNumber"])
        upper = lower - 1
    return None


_block_cache: dict[str, tuple[float, int]] = {}


def recent_block_number(*, max_age: float = 5.0) -> int:
    """The head block number, cached for ``max_age`` seconds (a search start, not a fact)."""
    url = active_network().rpc_url
    now = time.monotonic()
    cached = _block_cache.get(url)
    if cached and now - cached[0] < max_age:
        return cached[1]
    number = block_number()
    _block_cache[url] = (now, number)
    return number


def block_number(*, w3: Web3 | None = None) -> int:
    w3 = w3 or get_web3()
    return int(call_rpc(lambda: w3.eth.block_number))


def transaction_receipt(tx_hash: str, *, w3: Web3 | None = None) -> dict[str, Any] | None:
    """The receipt of ``tx_hash`` or None while it is not mined."""
    w3 = w3 or get_web3()
    try:
        return dict(call_rpc(w3.eth.get_transaction_receipt, tx_hash))
    except TransactionNotFound:
        return None


def transaction_known(tx_hash: str, *, w3: Web3 | None = None) -> bool:
    """Whether the node knows the transaction (pending or mined)."""
    w3 = w3 or get_web3()
    try:
        call_rpc(w3.eth.get_transaction, tx_hash)
        return True
    except TransactionNotFound:
        return False
