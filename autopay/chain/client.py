"""Chain access for the engine: one web3 per process, every call bounded by a timeout.

Transport failures surface as ChainUnavailable (transient); contract reverts as they are.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests
from django.conf import settings
from eth_abi import encode
from eth_utils import keccak, to_checksum_address
from web3 import Web3
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
from core.networks import active_network, rpc_failed
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


def get_web3(rpc_url: str | None = None) -> Web3:
    """A web3 bound to ``rpc_url`` (default CHAIN_RPC_URL), cached per thread."""
    url = rpc_url or active_network().rpc_url
    cache: dict[str, Web3] = getattr(_local, "web3", None) or {}
    _local.web3 = cache
    w3 = cache.get(url)
    if w3 is None:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        provider = Web3.HTTPProvider(
            url,
            request_kwargs={"timeout": settings.CHAIN_RPC_TIMEOUT_SECONDS},
            session=session,
            exception_retry_configuration=None,
        )
        w3 = Web3(provider)
        cache[url] = w3
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
