"""The x402 "exact" scheme settled in batches: many EIP-3009 authorizations in one transaction
through an aggregate3 (Multicall3) contract, each call with allowFailure, as a public x402
facilitator does with up to 1,000 authorizations.

Plain data in and out, like every rail: PaymentIntents and their signed authorizations in,
a Settlement or a PaymentError per item out; no model. Compared with the single path
(x402_exact), per batch instead of per payment:
- verification is local, with the rules of the SDK's exact-EVM verify (network, asset,
  recipient, amount, window, signature recovered with libsecp256k1), and one ``eth_call`` of
  aggregate3 on the pending block simulates the whole batch: each item's success or revert
  reason, so that an item that would fail is classified (as the single path classifies it)
  and never sent;
- one transaction carries the batch; its gas limit is computed from the calldata and a bound
  per call (the simulation ran under the same limit), so no gas estimate is needed;
- the outcome of each item is read from the receipt's AuthorizationUsed events: the derived
  nonce says which payment each belongs to; an item missing goes back as a transient failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings
from eth_utils import to_checksum_address
from redis.exceptions import RedisError

from autopay.chain import client as chain
from autopay.chain.abi import encode_transfer_with_authorization
from autopay.chain.multicall import (
    Call3,
    authorizations_used,
    encode_aggregate3,
    raw_receipt,
    simulate_aggregate3,
)
from autopay.chain.relayer import Relayer, RevertedCall, SettlementContext, settlement_context
from autopay.rails.authorization import (
    TransferAuthorization,
    authorization_digest,
    checksum_address,
    recover_signer,
)
from autopay.rails.base import PaymentIntent, Settlement
from autopay.rails.x402_exact import VALID_AFTER_SKEW_SECONDS, X402ExactRail
from subscriptions import errors

logger = logging.getLogger(__name__)

# What one transferWithAuthorization may cost inside aggregate3, its calldata aside (counted
# exactly), before refunds (which are only paid back at the end): ecrecover, the authorization
# slot (cold, zero to one), both balances cold with a recipient that held nothing (zero to
# non-zero), two events and the call itself. The coldest one measured takes 63k before its
# refund (tests/autopay/test_batch_rail.py); the shared payer and recipient slots of a real
# batch cost far less (about 35k), and the unused part of the limit is not paid for.
GAS_PER_CALL = 66_000
# aggregate3's own work (its loop, the result array) beyond the calls, and the 21k base.
GAS_BATCH_OVERHEAD = 21_000 + 40_000
# EIP-7825 (Osaka) caps a transaction's gas limit at 2**24; most chains cap blocks above it.
TRANSACTION_GAS_CAP = 2**24
# The SDK's verify refuses an authorization that expires within 6 s; so do we.
VALID_BEFORE_MARGIN_SECONDS = 6
# How long a checked token domain and multicall contract stay trusted in this process.
CHECK_TTL_SECONDS = 300.0

_checked: dict[tuple[str, str, str], float] = {}


@dataclass(frozen=True)
class SignedAuthorization:
    """One item of a batch: the payment, its authorization, the EIP-712 digest of that
    authorization (``X402BatchRail.digest``) and the payer's signature of it."""

    intent: PaymentIntent
    authorization: TransferAuthorization
    digest: bytes
    signature: bytes


@dataclass(frozen=True)
class BatchTransaction:
    """One aggregate3 transaction: its items, calldata and gas limit."""

    items: tuple[SignedAuthorization, ...]
    calldata: bytes
    gas_limit: int


ItemOutcome = Settlement | errors.PaymentError | None


class X402BatchRail:
    name = "x402-batch"

    def __init__(
        self,
        *,
        chain_id: int,
        network: str,
        token_name: str,
        token_version: str,
        validity_seconds: int,
        multicall_address: str,
        network_tokens: dict[str, str],
    ) -> None:
        self._chain_id = chain_id
        self._network = network
        self._token_name = token_name
        self._token_version = token_version
        self._validity_seconds = validity_seconds
        self._multicall = str(to_checksum_address(multicall_address))
        self._network_tokens = {key: value.lower() for key, value in network_tokens.items()}
        self._domains: dict[str, bytes] = {}
        # Reconciles an item whose authorization the chain says is used (no facilitator).
        self._single = X402ExactRail(
            facilitator=None,
            chain_id=chain_id,
            network=network,
            token_name=token_name,
            token_version=token_version,
            validity_seconds=validity_seconds,
            remote=False,
        )

    @classmethod
    def from_settings(cls, *, network_tokens: dict[str, str]) -> X402BatchRail | None:
        """The batch rail, or None when payments do not go through our own relayers (another
        rail, or a remote facilitator): then batches are settled one job at a time."""
        if settings.AUTOPAY_PAYMENT_RAIL != "x402" or settings.X402_FACILITATOR_URL:
            return None
        return cls(
            chain_id=settings.CHAIN_ID,
            network=settings.CHAIN_NETWORK,
            token_name=settings.TOKEN_EIP712_NAME,
            token_version=settings.TOKEN_EIP712_VERSION,
            validity_seconds=settings.AUTOPAY_AUTHORIZATION_VALIDITY_SECONDS,
            multicall_address=settings.CHAIN_MULTICALL_ADDRESS,
            network_tokens=network_tokens,
        )

    # --- authorizations ---------------------------------------------------------------------

    def reconcile(self, intent: PaymentIntent) -> Settlement | None:
        """The single path's check: was this period already paid (or is its earlier
        transaction still pending)? See X402ExactRail.reconcile."""
        return self._single.reconcile(intent)

    def authorization(self, intent: PaymentIntent, *, now: int) -> TransferAuthorization:
        """The single path's authorization (X402ExactRail.authorization), with checksums
        remembered across the batch."""
        return TransferAuthorization(
            token_address=checksum_address(intent.token_address),
            chain_id=self._chain_id,
            token_name=self._token_name,
            token_version=self._token_version,
            payer=checksum_address(intent.payer),
            recipient=checksum_address(intent.recipient),
            value=intent.amount_atomic,
            valid_after=now - VALID_AFTER_SKEW_SECONDS,
            valid_before=now + self._validity_seconds,
            nonce=intent.nonce,
        )

    def digest(self, authorization: TransferAuthorization) -> bytes:
        """The EIP-712 digest to sign, from the token's domain separator computed once."""
        token = authorization.token_address.lower()
        domain = self._domains.get(token)
        if domain is None:
            domain = chain.expected_domain_separator(
                name=self._token_name,
                version=self._token_version,
                chain_id=self._chain_id,
                token_address=authorization.token_address,
            )
            self._domains[token] = domain
        return authorization_digest(authorization, domain_separator=domain)

    def check_contracts(self, token_addresses: Sequence[str]) -> None:
        """The aggregate3 contract exists and each token's EIP-712 domain is the one we sign
        under; raise ConfigurationError otherwise (checked once per process per five minutes:
        a signature the chain refuses is then the item's, not the configuration's)."""
        now = time.monotonic()
        url = settings.CHAIN_RPC_URL
        key = (url, "multicall", str(self._multicall))
        if now - _checked.get(key, -CHECK_TTL_SECONDS) >= CHECK_TTL_SECONDS:
            if not chain.call_rpc(chain.get_web3().eth.get_code, self._multicall):
                raise errors.ConfigurationError(
                    f"no aggregate3 contract at CHAIN_MULTICALL_ADDRESS {self._multicall}"
                )
            _checked[key] = now
        for token in dict.fromkeys(address.lower() for address in token_addresses):
            key = (url, "domain", token)
            if now - _checked.get(key, -CHECK_TTL_SECONDS) < CHECK_TTL_SECONDS:
                continue
            on_chain = chain.domain_separator(token)
            if on_chain is None:
                raise errors.ConfigurationError(
                    f"token {to_checksum_address(token)} is not an EIP-712 token contract"
                )
            if on_chain != chain.expected_domain_separator(
                name=self._token_name,
                version=self._token_version,
                chain_id=self._chain_id,
                token_address=token,
            ):
                raise errors.ConfigurationError(
                    "the token's EIP-712 domain differs from TOKEN_EIP712_NAME/TOKEN_EIP712_VERSION"
                )
            _checked[key] = now

    def verify(self, item: SignedAuthorization, *, now: int) -> errors.PaymentError | None:
        """The SDK's exact-EVM verify, locally: network, asset, recipient, amount, validity
        window and signature, with the same error codes as the single path."""
        intent, authorization = item.intent, item.authorization
        if intent.network != self._network:
            return errors.UnsupportedNetwork(
                f"payment is on {intent.network}, this engine pays on {self._network}"
            )
        allowed = self._network_tokens.get(intent.network)
        if allowed is not None and authorization.token_address.lower() != allowed:
            return errors.InvalidAuthorization(
                "invalid_exact_evm_asset_mismatch: the token is not the network's"
            )
        if authorization.recipient.lower() != intent.recipient.lower():
            return errors.InvalidAuthorization("invalid_exact_evm_payload_recipient_mismatch")
        if authorization.value != intent.amount_atomic:
            return errors.InvalidAuthorization(
                "invalid_exact_evm_payload_authorization_value_mismatch"
            )
        if authorization.valid_before < now + VALID_BEFORE_MARGIN_SECONDS:
            return errors.AuthorizationExpired(
                "invalid_exact_evm_payload_authorization_valid_before"
            )
        if authorization.valid_after > now:
            return errors.AuthorizationNotYetValid(
                "invalid_exact_evm_payload_authorization_valid_after"
            )
        signer = recover_signer(item.digest, item.signature)
        if signer is None or signer.lower() != authorization.payer.lower():
            return errors.InvalidSignature("invalid_exact_evm_payload_signature")
        return None

    # --- one transaction per batch ----------------------------------------------------------

    def calls(self, items: Sequence[SignedAuthorization]) -> list[Call3]:
        return [
            Call3(
                target=item.authorization.token_address,
                call_data=encode_transfer_with_authorization(
                    payer=item.authorization.payer,
                    recipient=item.authorization.recipient,
                    value=item.authorization.value,
                    valid_after=item.authorization.valid_after,
                    valid_before=item.authorization.valid_before,
                    nonce=bytes.fromhex(item.authorization.nonce.removeprefix("0x")),
                    signature=item.signature,
                ),
            )
            for item in items
        ]

    @staticmethod
    def max_items_per_transaction(block_gas_limit: int) -> int:
        """How many authorizations one transaction may carry under the block's gas limit and
        the transaction cap, at the worst-case cost of each (calldata included)."""
        room = min(block_gas_limit, TRANSACTION_GAS_CAP) - GAS_BATCH_OVERHEAD
        return max(room // (GAS_PER_CALL + 5_000), 1)  # about 4.3k of calldata each

    def transaction(self, items: Sequence[SignedAuthorization]) -> BatchTransaction:
        """The batch's aggregate3 transaction. Its gas limit is the calldata's exact cost plus
        a bound per call; the simulation runs under the same limit, so no estimate is needed
        (an estimate would run the whole batch several times over)."""
        calldata = encode_aggregate3(self.calls(items))
        zeros = calldata.count(0)
        calldata_gas = 4 * zeros + 16 * (len(calldata) - zeros)
        return BatchTransaction(
            items=tuple(items),
            calldata=calldata,
            gas_limit=GAS_BATCH_OVERHEAD + calldata_gas + len(items) * GAS_PER_CALL,
        )

    def simulate(self, transaction: BatchTransaction, *, sender: str) -> list[ItemOutcome]:
        """One eth_call of aggregate3 over the batch: None for an item that will settle, else
        its outcome (a Settlement found on-chain when its authorization is already used, or
        the error the single path would report). Raises RpcUnavailable when it cannot ask."""
        results = simulate_aggregate3(
            chain.get_web3(),
            multicall=self._multicall,
            calldata=transaction.calldata,
            calls=len(transaction.items),
            sender=sender,
            gas=transaction.gas_limit,
        )
        outcomes: list[ItemOutcome] = []
        for item, result in zip(transaction.items, results, strict=True):
            outcomes.append(None if result.success else self._refused(item, result.revert_reason))
        return outcomes

    def _refused(self, item: SignedAuthorization, reason: str) -> ItemOutcome:
        """An item the simulation says would fail, classified as the single path does."""
        text = reason.lower()
        if "authorization is used" in text:
            # Paid already (a racing attempt, an earlier batch): find that transaction.
            try:
                settlement = self._single.reconcile(item.intent)
            except errors.PaymentError as error:
                return error
            return settlement or errors.BatchItemFailed(f"{reason}, yet not seen used on-chain")
        if "transfer amount exceeds balance" in text:
            return errors.InsufficientBalance(reason)
        if "authorization is expired" in text:
            # Our clock and the chain's disagree: the next attempt signs a new window.
            return errors.ChainClockAhead(reason)
        if "authorization is not yet valid" in text:
            return errors.AuthorizationNotYetValid(reason)
        if "invalid signature" in text:
            # The token's domain was checked (check_contracts): the signature is the item's.
            return errors.InvalidSignature(reason)
        if "without a reason" in text:
            return errors.BatchItemFailed(reason)
        return errors.SettlementFailed(reason)

    def send(
        self,
        transaction: BatchTransaction,
        *,
        relayer: Relayer,
        on_signed: Callable[[str], None],
        on_unsent: Callable[[str], None],
    ) -> str:
        """Sign and broadcast the batch's transaction with ``relayer`` (its nonce allocated
        under its own lock); ``on_signed`` records the hash before the broadcast. Returns the
        hash; raises a transient PaymentError when nothing (or maybe something) was sent."""
        data = "0x" + transaction.calldata.hex()
        context = SettlementContext(on_signed=on_signed, on_unsent=on_unsent)
        try:
            with settlement_context(context):
                return relayer.send_call(
                    to=self._multicall, data=data, gas_limit=transaction.gas_limit
                )
        except errors.PaymentError:
            raise
        except RedisError as exc:
            raise errors.RedisUnavailable(
                f"relayer bookkeeping unavailable: {type(exc).__name__}"
            ) from exc
        except RevertedCall as exc:
            raise errors.BatchItemFailed(f"the batch transaction would revert: {exc}") from exc
        except Exception as exc:
            error = chain.rpc_error(exc)
            if error is not None:
                raise error from exc
            raise

    def outcomes(
        self, transaction_hash: str, items: Sequence[PaymentIntent]
    ) -> list[Settlement | errors.PaymentError] | None:
        """Each item's outcome from the mined transaction's AuthorizationUsed events, or None
        while it is not mined (or not yet confirmed CHAIN_CONFIRMATIONS times)."""
        w3 = chain.get_web3()
        receipt = raw_receipt(w3, transaction_hash)
        if receipt is None or receipt.get("blockNumber") is None:
            return None
        block = int(str(receipt["blockNumber"]), 16)
        confirmations = settings.CHAIN_CONFIRMATIONS
        if confirmations > 1 and chain.block_number(w3=w3) - block + 1 < confirmations:
            return None
        if int(str(receipt.get("status", "0x0")), 16) != 1:
            failed = errors.BatchItemFailed(f"batch transaction {transaction_hash} reverted")
            return [failed for _ in items]
        used = authorizations_used(receipt.get("logs") or [])
        # Each settled payment's share of the transaction's gas (its AuthorizationUsed events
        # are the payments it carried).
        gas_share = int(str(receipt.get("gasUsed", "0x0")), 16) // max(len(used), 1)
        price = receipt.get("effectiveGasPrice")
        results: list[Settlement | errors.PaymentError] = []
        for intent in items:
            key = (intent.token_address.lower(), intent.payer.lower(), intent.nonce.lower())
            if key in used:
                results.append(
                    Settlement(
                        transaction_hash=transaction_hash,
                        block_number=block,
                        gas_used=gas_share,
                        effective_gas_price=int(str(price), 16) if price is not None else None,
                    )
                )
            else:
                results.append(
                    errors.BatchItemFailed(
                        f"the payment's call failed in batch transaction {transaction_hash}"
                    )
                )
        return results
