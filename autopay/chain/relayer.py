"""The gas-paying relayer: our implementation of the x402 SDK's FacilitatorEvmSigner.

Written here because the SDK's bundled FacilitatorWeb3Signer (x402 2.25) falls short for a
fleet of workers: it allocates transaction nonces per process (two workers collide), sends
legacy gas-price transactions with a fixed gas limit, and broadcasts without simulating. This
one allocates nonces under a Redis lock shared by every worker process and machine, estimates
gas (an eth_estimateGas is the simulation: a doomed transfer is never broadcast), prices with
EIP-1559 fees, and tells the engine each transaction hash before it is broadcast so a crash
right after the send can be reconciled.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from x402.mechanisms.evm.types import TransactionReceipt

from autopay.chain.client import (
    ChainUnavailable,
    get_web3,
    is_transport_error,
    rpc_error,
    token_balance,
)
from core.networks import NetworkConfig, active_network
from core.redis import get_redis
from subscriptions.errors import (
    Fault,
    NonceRace,
    RelayerUnavailable,
    SettlementPending,
    TransientPaymentError,
)

logger = logging.getLogger(__name__)

# Geth (and most nodes) accept a replacement only with both fees raised by at least 10 %.
MIN_REPLACEMENT_BUMP_PERCENT = 10.0

_NONCE_ERRORS = (
    "nonce too low",
    "already known",
    "replacement transaction underpriced",
    "nonce too high",
    "invalid nonce",
)


class RevertedCall(Exception):
    """An eth_call or gas estimate reverted. The text carries 'execution reverted: <reason>',
    which the SDK's error parser maps to its reason codes."""


@dataclass
class SettlementContext:
    """Per-settlement hooks and observations, set by the engine around a facilitator call."""

    on_signed: Callable[[str], None] | None = None
    on_unsent: Callable[[str], None] | None = None
    transport_error: BaseException | None = None
    # The first exception our relayer raised to the SDK, which swallows it into a reason
    # string; the rail classifies by this original instead.
    error: BaseException | None = None
    sent_hashes: list[str] = field(default_factory=list)
    # The transaction that landed when it is a fee-bump replacement of the one first sent (the
    # SDK only knows the first).
    landed_hash: str | None = None


@dataclass(frozen=True)
class SentTransaction:
    """What the relayer signed, kept to replace it with higher fees (a node may have dropped
    it, so it cannot be read back from the node)."""

    nonce: int
    to: str
    data: str
    gas: int
    max_fee: int
    priority: int


_context = threading.local()


@contextlib.contextmanager
def settlement_context(context: SettlementContext) -> Iterator[SettlementContext]:
    previous = getattr(_context, "value", None)
    _context.value = context
    try:
        yield context
    finally:
        _context.value = previous


def _current() -> SettlementContext | None:
    return getattr(_context, "value", None)


def _note_transport(exc: BaseException) -> None:
    context = _current()
    if context is not None and context.transport_error is None:
        context.transport_error = exc


def _note_error(exc: BaseException) -> None:
    context = _current()
    if context is not None and context.error is None:
        context.error = exc


class RelayerError(TransientPaymentError):
    """The node refused or failed a relayer request for a reason retrying can fix (rate limit,
    node out of sync, relayer out of gas funds, lock contention)."""

    code = "relayer_error"
    fault = Fault.INFRASTRUCTURE


class RelayerUnfunded(RelayerError):
    """The node refused the relayer's transaction for lack of ETH for gas. The relayer is
    taken out of its pool at once and the job waits a moment for another one: the operator's
    fault, never the customer's."""

    code = "relayer_unfunded"
    fault = Fault.OPERATOR


# What a node says when the sender cannot pay for gas (geth, anvil, erigon, nethermind).
_UNFUNDED_ERRORS = ("insufficient funds", "insufficient balance for transfer")


def _is_unfunded(exc: BaseException) -> bool:
    message = str(exc).lower()
    return any(fragment in message for fragment in _UNFUNDED_ERRORS)


# Compare-and-max: the stored next nonce never moves backwards (a slow process finishing late
# must not lower it).
_SET_MAX_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""


def _revert_text(exc: ContractLogicError) -> str:
    message = str(exc.message or exc)
    return message if "revert" in message else f"execution reverted: {message}"


class Relayer:
    """Sends settlement transactions for the in-process facilitator."""

    def __init__(
        self,
        *,
        private_key: str,
        w3: Web3,
        redis_client: redis.Redis,
        chain_id: int,
        confirmations: int = 1,
        confirmation_timeout: float = 60.0,
        poll_interval: float = 0.05,
        max_fee_wei: int | None = None,
        priority_fee_wei: int = 1_000_000_000,
        lock_timeout: float = 30.0,
        fee_bump_blocks: int = 0,
        fee_bump_percent: float = 15.0,
    ) -> None:
        self._account = Account.from_key(private_key)
        self._w3 = w3
        self._redis = redis_client
        self._chain_id = chain_id
        self._confirmations = max(confirmations, 1)
        self._confirmation_timeout = confirmation_timeout
        self._poll_interval = poll_interval
        self._max_fee_wei = max_fee_wei
        self._priority_fee_wei = priority_fee_wei
        self._lock_timeout = lock_timeout
        # Replace a transaction still pending after this many blocks (0: never), with fees
        # raised by this much (at least the 10 % a node requires of a replacement).
        self._fee_bump_blocks = fee_bump_blocks
        self._fee_bump_percent = max(fee_bump_percent, MIN_REPLACEMENT_BUMP_PERCENT)
        self._sent: OrderedDict[str, SentTransaction] = OrderedDict()
        self._fee_cache: tuple[float, int, int] | None = None
        key = f"autopay:relayer:{chain_id}:{self._account.address.lower()}"
        self._nonce_key = f"{key}:next-nonce"
        self._lock_key = f"{key}:lock"

    def __repr__(self) -> str:
        return f"<Relayer {self._account.address} chain={self._chain_id}>"

    @property
    def address(self) -> str:
        return str(self._account.address)

    # --- FacilitatorEvmSigner protocol ----------------------------------------------------

    def get_addresses(self) -> list[str]:
        return [self.address]

    def balance_wei(self) -> int:
        """The relayer's ETH (what pays for gas)."""
        return int(self._w3.eth.get_balance(to_checksum_address(self.address)))

    def get_chain_id(self) -> int:
        return self._chain_id

    def _rpc(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (ContractLogicError, TransactionNotFound):
            raise
        except Exception as exc:
            error = rpc_error(exc)
            if error is None:
                raise
            if is_transport_error(exc):
                _note_transport(exc)
            _note_error(error)
            raise error from exc

    def read_contract(
        self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any
    ) -> Any:
        contract = self._w3.eth.contract(address=to_checksum_address(address), abi=abi)
        call = getattr(contract.functions, function_name)(*args)
        try:
            return self._rpc(call.call, {"from": self.address})
        except ContractLogicError as exc:
            raise RevertedCall(_revert_text(exc)) from exc

    def get_code(self, address: str) -> bytes:
        return bytes(self._rpc(self._w3.eth.get_code, to_checksum_address(address)))

    def get_balance(self, address: str, token_address: str) -> int:
        return token_balance(token_address, address, w3=self._w3)

    def verify_typed_data(
        self,
        address: str,
        domain: Any,
        types: dict[str, Any],
        primary_type: str,
        message: dict[str, Any],
        signature: bytes,
    ) -> bool:
        domain_dict = (
            domain
            if isinstance(domain, dict)
            else {
                "name": domain.name,
                "version": domain.version,
                "chainId": domain.chain_id,
                "verifyingContract": domain.verifying_contract,
            }
        )
        signable = encode_typed_data(domain_dict, types, message)
        return bool(
            Account.recover_message(signable, signature=signature).lower() == address.lower()
        )

    def send_transaction(self, to: str, data: bytes) -> str:
        # Only used for ERC-6492 smart-wallet deployment, which auto-pay does not offer.
        raise NotImplementedError("smart-wallet deployment is not supported by the relayer")

    def write_contract(
        self,
        address: str,
        abi: list[dict[str, Any]],
        function_name: str,
        *args: Any,
        data_suffix: str | None = None,
    ) -> str:
        contract = self._w3.eth.contract(address=to_checksum_address(address), abi=abi)
        data = contract.encode_abi(function_name, args=list(args))
        if data_suffix:
            data = data + data_suffix.removeprefix("0x")
        try:
            return self.send_call(to=to_checksum_address(address), data=data)
        except RevertedCall:
            raise
        except BaseException as exc:
            _note_error(exc)
            raise

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        receipt = self.wait_for_receipt(tx_hash)
        return TransactionReceipt(
            status=1 if receipt["status"] == 1 else 0,
            block_number=int(receipt["blockNumber"]),
            tx_hash=tx_hash,
            logs=list(receipt.get("logs") or []),
        )

    # --- Sending --------------------------------------------------------------------------

    def _fees(self, *, fresh: bool = False) -> tuple[int, int]:
        """EIP-1559 (maxFeePerGas, maxPriorityFeePerGas) with headroom for a rising base fee."""
        now = time.monotonic()
        if not fresh and self._fee_cache and now - self._fee_cache[0] < 2.0:
            return self._fee_cache[1], self._fee_cache[2]
        block = self._rpc(self._w3.eth.get_block, "latest")
        base_fee = int(block.get("baseFeePerGas") or 0)
        priority = self._priority_fee_wei
        max_fee = base_fee * 2 + priority
        if self._max_fee_wei is not None:
            max_fee = min(max_fee, self._max_fee_wei)
            priority = min(priority, max_fee)
        self._fee_cache = (now, max_fee, priority)
        return max_fee, priority

    def send_call(
        self, *, to: str, data: str, attempts: int = 4, gas_limit: int | None = None
    ) -> str:
        """Simulate, price, sign and broadcast a call; return its transaction hash.

        With ``gas_limit`` the caller has simulated the call itself (a batch, whose eth_call
        already gave each item's outcome) and no gas estimate is made.
        """
        if gas_limit is None:
            request = {"from": self.address, "to": to, "data": data}
            try:
                gas = int(self._rpc(self._w3.eth.estimate_gas, request))
            except ContractLogicError as exc:
                # Simulation failed: nothing is broadcast.
                raise RevertedCall(_revert_text(exc)) from exc
            except Web3RPCError as exc:
                if _is_unfunded(exc):
                    relayer_take_out(
                        network=active_network().network, address=self.address, reason=str(exc)
                    )
                    raise RelayerUnfunded(f"relayer {self.address} cannot pay for gas") from exc
                raise RelayerError(f"gas estimate refused by the node: {exc}") from exc
            gas_limit = gas + gas // 5 + 5_000
        max_fee, priority = self._fees()
        for attempt in range(attempts):
            try:
                return self._sign_and_send(
                    to=to, data=data, gas=gas_limit, max_fee=max_fee, priority=priority
                )
            except NonceRace:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise NonceRace("relayer nonce could not be allocated")

    def _sign_and_send(self, *, to: str, data: str, gas: int, max_fee: int, priority: int) -> str:
        context = _current()
        lock = self._redis.lock(
            self._lock_key, timeout=self._lock_timeout, blocking_timeout=self._lock_timeout
        )
        if not lock.acquire():
            raise NonceRace("relayer nonce lock is busy")
        try:
            nonce = self._next_nonce()
            signed = self._account.sign_transaction(
                {
                    "type": 2,
                    "chainId": self._chain_id,
                    "to": to,
                    "data": data,
                    "value": 0,
                    "gas": gas,
                    "maxFeePerGas": max_fee,
                    "maxPriorityFeePerGas": priority,
                    "nonce": nonce,
                }
            )
            tx_hash = "0x" + bytes(signed.hash).hex().removeprefix("0x")
            if context is not None and context.on_signed is not None:
                # May raise (e.g. the job's lease was lost): then nothing is broadcast.
                context.on_signed(tx_hash)
            # The lock may have run out during the writes above: never send on a nonce that
            # another process may now hold.
            if not lock.owned() or not lock.reacquire():
                if context is not None and context.on_unsent is not None:
                    context.on_unsent(tx_hash)
                raise NonceRace("relayer nonce lock expired before the broadcast")
            try:
                self._w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:
                message = str(exc).lower()
                # Resynchronise from the node on the next send, whatever happened.
                self._redis.delete(self._nonce_key)
                if is_transport_error(exc):
                    # Ambiguous: the node may have received it. The engine reconciles by hash
                    # and by the authorization nonce, never by sending blindly again.
                    _note_transport(exc)
                    raise ChainUnavailable(f"broadcast failed: {type(exc).__name__}") from exc
                if "already known" in message:
                    return tx_hash
                if context is not None and context.on_unsent is not None:
                    context.on_unsent(tx_hash)
                if any(fragment in message for fragment in _NONCE_ERRORS):
                    raise NonceRace(f"relayer nonce {nonce} was taken: {exc}") from exc
                if _is_unfunded(exc):
                    # Nothing was accepted; this relayer stops taking work until it is funded.
                    relayer_take_out(
                        network=active_network().network, address=self.address, reason=str(exc)
                    )
                    raise RelayerUnfunded(f"relayer {self.address} cannot pay for gas") from exc
                if isinstance(exc, Web3RPCError):
                    # e.g. rate limited, node out of sync: nothing was accepted.
                    raise RelayerError(f"broadcast refused by the node: {exc}") from exc
                raise
            if context is not None:
                context.sent_hashes.append(tx_hash)
            self._remember(
                tx_hash,
                SentTransaction(
                    nonce=nonce, to=to, data=data, gas=gas, max_fee=max_fee, priority=priority
                ),
            )
            # Bookkeeping only: a Redis hiccup here must not turn a broadcast into a failure.
            with contextlib.suppress(Exception):
                self._redis.eval(_SET_MAX_SCRIPT, 1, self._nonce_key, nonce + 1, 3600)
            return tx_hash
        finally:
            with contextlib.suppress(Exception):
                lock.release()

    def _next_nonce(self) -> int:
        """The nonce to use, called under the lock.

        The node's pending count is the truth; the stored value only covers a load-balanced
        node that has not seen our last send yet. When the stored value is ahead but the node
        has nothing of ours pending at all (pending == latest), the transactions in between
        were dropped (mempool eviction, node restart): reuse the node's count, which fills the
        gap and lets any queued later transactions through, instead of stalling forever.
        """
        pending = int(self._rpc(self._w3.eth.get_transaction_count, self.address, "pending"))
        stored_raw = self._redis.get(self._nonce_key)
        stored = int(stored_raw) if stored_raw is not None else 0
        if stored <= pending:
            return pending
        latest = int(self._rpc(self._w3.eth.get_transaction_count, self.address, "latest"))
        if latest == pending:
            logger.warning(
                "relayer %s: nonces %d..%d never reached the chain; reusing %d",
                self.address,
                pending,
                stored - 1,
                pending,
            )
            self._redis.delete(self._nonce_key)
            return pending
        return stored

    def wait_for_receipt(self, tx_hash: str) -> dict[str, Any]:
        """Poll for the receipt until it has the configured confirmations, or time out.

        A transaction still pending ``fee_bump_blocks`` blocks after it was sent (or after its
        last replacement) is replaced: same nonce, fees raised by at least the node's
        replacement minimum, capped by RELAYER_MAX_FEE_GWEI. Whichever of them lands is the
        receipt returned (and ``landed_hash`` of the settlement context).
        """
        deadline = time.monotonic() + self._confirmation_timeout
        candidates = [tx_hash]  # the original, then its replacements (one nonce)
        bump_from_block: int | None = None
        next_head_check = 0.0
        while True:
            for candidate in reversed(candidates):
                receipt = self._receipt(candidate)
                if receipt is None:
                    continue
                if self._confirmations > 1:
                    head = int(self._rpc(lambda: self._w3.eth.block_number))
                    if head - int(receipt["blockNumber"]) + 1 < self._confirmations:
                        break
                context = _current()
                if candidate != tx_hash and context is not None:
                    context.landed_hash = candidate
                return receipt
            now = time.monotonic()
            if self._fee_bump_blocks and now >= next_head_check:
                next_head_check = now + min(1.0, max(self._poll_interval, 0.2))
                head = int(self._rpc(lambda: self._w3.eth.block_number))
                if bump_from_block is None:
                    bump_from_block = head
                elif head - bump_from_block >= self._fee_bump_blocks:
                    bump_from_block = head
                    replacement = self.replace_with_higher_fees(candidates[-1])
                    if replacement is not None:
                        candidates.append(replacement)
            if now >= deadline:
                raise SettlementPending(
                    f"transaction {candidates[-1]} not confirmed within "
                    f"{self._confirmation_timeout:.0f}s"
                )
            time.sleep(self._poll_interval)

    def _receipt(self, tx_hash: str) -> dict[str, Any] | None:
        try:
            return dict(self._rpc(self._w3.eth.get_transaction_receipt, tx_hash))
        except TransactionNotFound:
            return None

    # --- Fee bumping ----------------------------------------------------------------------

    def _remember(self, tx_hash: str, sent: SentTransaction) -> None:
        self._sent[tx_hash] = sent
        while len(self._sent) > 512:
            self._sent.popitem(last=False)

    def replacement_fees(self, sent: SentTransaction) -> tuple[int, int] | None:
        """(maxFeePerGas, maxPriorityFeePerGas) for a replacement of ``sent``: today's market
        price, and at least ``fee_bump_percent`` above the old fees (a node refuses less);
        None when the cap (RELAYER_MAX_FEE_GWEI) leaves no room for such a raise."""
        market_max_fee, market_priority = self._fees(fresh=True)
        factor = 1 + self._fee_bump_percent / 100
        least_max_fee = math.ceil(sent.max_fee * factor)
        least_priority = math.ceil(sent.priority * factor)
        max_fee = max(market_max_fee, least_max_fee)
        priority = max(market_priority, least_priority)
        if self._max_fee_wei is not None:
            max_fee = min(max_fee, self._max_fee_wei)
        priority = min(priority, max_fee)
        if max_fee < least_max_fee or priority < least_priority:
            return None
        return max_fee, priority

    def replace_with_higher_fees(self, tx_hash: str) -> str | None:
        """Broadcast a replacement of the pending ``tx_hash`` (same nonce, call and gas, higher
        fees) and return its hash; None when it cannot or need not be replaced (fees at the
        cap, unknown to this process, already mined, refused by the node)."""
        sent = self._sent.get(tx_hash)
        if sent is None:
            return None
        fees = self.replacement_fees(sent)
        if fees is None:
            logger.warning(
                "relayer %s: transaction %s is stuck and its fees cannot be raised under "
                "RELAYER_MAX_FEE_GWEI",
                self.address,
                tx_hash,
            )
            return None
        max_fee, priority = fees
        signed = self._account.sign_transaction(
            {
                "type": 2,
                "chainId": self._chain_id,
                "to": sent.to,
                "data": sent.data,
                "value": 0,
                "gas": sent.gas,
                "maxFeePerGas": max_fee,
                "maxPriorityFeePerGas": priority,
                "nonce": sent.nonce,
            }
        )
        replacement = "0x" + bytes(signed.hash).hex().removeprefix("0x")
        context = _current()
        if context is not None and context.on_signed is not None:
            # Recorded before the broadcast, like any settlement transaction.
            context.on_signed(replacement)
        try:
            self._w3.eth.send_raw_transaction(signed.raw_transaction)
        except Exception as exc:
            message = str(exc).lower()
            if is_transport_error(exc):
                # It may have reached the node: watch it too.
                _note_transport(exc)
            elif "already known" not in message:
                # Mined meanwhile ("nonce too low") or refused: keep watching the previous one.
                logger.info("relayer %s: replacement of %s refused: %s", self.address, tx_hash, exc)
                if context is not None and context.on_signed is not None:
                    context.on_signed(tx_hash)  # the payment records the previous one again
                if context is not None and context.on_unsent is not None:
                    context.on_unsent(replacement)
                return None
        if context is not None:
            context.sent_hashes.append(replacement)
        self._remember(
            replacement,
            SentTransaction(
                nonce=sent.nonce,
                to=sent.to,
                data=sent.data,
                gas=sent.gas,
                max_fee=max_fee,
                priority=priority,
            ),
        )
        logger.warning(
            "relayer %s: %s still pending; replaced by %s (max fee %d -> %d wei/gas)",
            self.address,
            tx_hash,
            replacement,
            sent.max_fee,
            max_fee,
        )
        return replacement


_relayers: dict[tuple[str, str, str, str], Relayer] = {}
_relayers_lock = threading.Lock()
_turn = itertools.count(random.randrange(1024))


def relayer_keys(network: NetworkConfig | None = None) -> list[str]:
    """The relayer pool of ``network`` (default: the one being paid on): on the default chain
    RELAYER_PRIVATE_KEYS when set, else the network's one relayer key."""
    network = network or active_network()
    if settings.RELAYER_PRIVATE_KEYS and network.network == settings.CHAIN_NETWORK:
        return list(dict.fromkeys(settings.RELAYER_PRIVATE_KEYS))
    return [network.relayer_private_key] if network.relayer_private_key else []


def get_relayer() -> Relayer:
    """A relayer of the network being paid on, each call the next key of its pool in turn,
    so that a process's settlements spread over every key (each key has its own nonce lock).
    A relayer out of the pool (below RELAYER_MIN_BALANCE_ETH, or refused for funds) is
    skipped; with none left the job waits as ``relayer_unavailable``."""
    network = active_network()
    keys = relayer_keys(network)
    if not keys:
        raise ImproperlyConfigured(
            f"RELAYER_PRIVATE_KEY is not set for {network.network}; the facilitator cannot pay gas."
        )
    start = next(_turn)
    for offset in range(len(keys)):
        relayer = _relayer_for(network, keys[(start + offset) % len(keys)])
        if _in_pool(network, relayer):
            return relayer
    raise RelayerUnavailable(
        f"no relayer of {network.network} can pay for gas: all {len(keys)} are out of the pool "
        "(below RELAYER_MIN_BALANCE_ETH or refused for funds); fund one"
    )


# Listeners told when a relayer is taken out of its pool (network, address, reason): the
# engine registers the operator's alert (autopay.funding), this library knows no model.
relayer_out_listeners: list[Callable[[str, str, str], None]] = []
# Per process: when each relayer's balance was last read, and whether it was enough.
_balance_checked: dict[tuple[str, str], tuple[float, bool]] = {}
# Per process, when Redis cannot be reached: relayers taken out and until when.
_out_locally: dict[tuple[str, str], float] = {}


def _out_key(network: str, address: str) -> str:
    return f"autopay:relayer:out:{network}:{address.lower()}"


def relayer_take_out(*, network: str, address: str, reason: str) -> bool:
    """Take a relayer out of ``network``'s pool for RELAYER_OUT_OF_POOL_SECONDS (its balance
    is read again after that). True when this call took it out (so the alert is sent once)."""
    seconds = max(int(settings.RELAYER_OUT_OF_POOL_SECONDS), 1)
    _out_locally[(network, address.lower())] = time.monotonic() + seconds
    try:
        taken = bool(get_redis().set(_out_key(network, address), reason[:500], nx=True, ex=seconds))
    except redis.RedisError:
        taken = True
    if taken:
        logger.error(
            "relayer %s on %s taken out of the pool for %ds: %s",
            address,
            network,
            seconds,
            reason,
        )
        for listener in relayer_out_listeners:
            try:
                listener(network, address, reason)
            except Exception:
                logger.exception("relayer %s: an out-of-pool listener failed", address)
    return taken


def relayers_out_of_pool(network: str, addresses: list[str]) -> set[str]:
    """Which of ``addresses`` are out of ``network``'s pool now."""
    try:
        client = get_redis()
        with client.pipeline(transaction=False) as pipe:
            for address in addresses:
                pipe.exists(_out_key(network, address))
            flags = pipe.execute()
        return {address for address, flag in zip(addresses, flags, strict=True) if flag}
    except redis.RedisError:
        now = time.monotonic()
        return {
            address
            for address in addresses
            if _out_locally.get((network, address.lower()), 0.0) > now
        }


def _in_pool(network: NetworkConfig, relayer: Relayer) -> bool:
    """Whether ``relayer`` may take work: not taken out, and (read at most every
    RELAYER_BALANCE_CHECK_SECONDS per process) holding at least RELAYER_MIN_BALANCE_ETH. A
    balance the chain does not tell is no reason to stop (the send will say)."""
    if relayers_out_of_pool(network.network, [relayer.address]):
        return False
    key = (network.network, relayer.address)
    now = time.monotonic()
    checked = _balance_checked.get(key)
    if checked is not None and now - checked[0] < settings.RELAYER_BALANCE_CHECK_SECONDS:
        return checked[1]
    minimum = int(settings.RELAYER_MIN_BALANCE_ETH * 10**18)
    try:
        balance = int(relayer.balance_wei())
    except Exception as exc:
        logger.warning("relayer %s balance unavailable: %s", relayer.address, type(exc).__name__)
        return True
    funded = balance >= minimum
    _balance_checked[key] = (now, funded)
    if not funded:
        relayer_take_out(
            network=network.network,
            address=relayer.address,
            reason=f"balance {balance} wei is below RELAYER_MIN_BALANCE_ETH",
        )
    return funded


def _relayer_for(network: NetworkConfig, private_key: str) -> Relayer:
    cache_key = (network.network, network.rpc_url, threading.current_thread().name, private_key)
    with _relayers_lock:
        relayer = _relayers.get(cache_key)
        if relayer is None:
            max_fee = (
                int(settings.RELAYER_MAX_FEE_GWEI * 10**9)
                if settings.RELAYER_MAX_FEE_GWEI
                else None
            )
            relayer = Relayer(
                private_key=private_key,
                w3=get_web3(network.rpc_url),
                redis_client=get_redis(),
                chain_id=network.chain_id,
                confirmations=network.confirmations,
                confirmation_timeout=settings.CHAIN_CONFIRMATION_TIMEOUT_SECONDS,
                poll_interval=settings.CHAIN_RECEIPT_POLL_SECONDS,
                max_fee_wei=max_fee,
                lock_timeout=settings.RELAYER_LOCK_TIMEOUT_SECONDS,
                fee_bump_blocks=settings.RELAYER_FEE_BUMP_BLOCKS,
                fee_bump_percent=settings.RELAYER_FEE_BUMP_PERCENT,
            )
            _relayers[cache_key] = relayer
        return relayer
