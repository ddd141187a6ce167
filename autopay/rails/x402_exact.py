"""The x402 "exact" scheme on an EVM chain: EIP-3009 authorizations settled by a facilitator.

What comes from the x402 SDK: the PaymentRequirements / PaymentPayload types, the exact-EVM
facilitator (verify: signature recovery, window, recipient and amount checks and a simulation;
settle: transferWithAuthorization and receipt check) and the HTTP facilitator client.
What is ours, and why:
- the authorization: the SDK client signs with a random nonce and a window starting now; we
  derive the nonce from the payment (the chain then refuses a second charge) and back-date
  validAfter a little so clock skew between us and the chain cannot reject it;
- the relayer (autopay.chain.relayer): shared nonces, EIP-1559 fees, gas estimation;
- reconciliation: before paying we ask the chain whether the nonce was used and, if so, find
  the transaction instead of paying again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError
from eth_utils import to_checksum_address
from redis.exceptions import RedisError
from x402.http import AuthHeaders, FacilitatorConfig, HTTPFacilitatorClientSync
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme
from x402.mechanisms.evm.exact.facilitator import ExactEvmSchemeConfig
from x402.schemas import PaymentPayload, PaymentRequirements

from autopay.chain import client as chain
from autopay.chain.relayer import SettlementContext, get_relayer, settlement_context
from autopay.rails.authorization import TransferAuthorization
from autopay.rails.base import PaymentHooks, PaymentIntent, Progress, Settlement
from subscriptions import errors

logger = logging.getLogger(__name__)

# validAfter is set this far in the past: EIP-3009 needs validAfter < block.timestamp.
VALID_AFTER_SKEW_SECONDS = 600


class _NoPendingStore:
    """The SDK's pending-settlement cache is per process; the Payment row is our durable one."""

    def get(self, key: str) -> str | None:
        return None

    def set(self, key: str, tx_hash: str) -> None:
        return None

    def delete(self, key: str) -> None:
        return None


_PERMANENT_REASONS: dict[str, type[errors.PaymentError]] = {
    "invalid_exact_evm_payload_signature": errors.InvalidSignature,
    "invalid_exact_evm_payload_authorization_valid_before": errors.AuthorizationExpired,
    "invalid_exact_evm_insufficient_balance": errors.InsufficientBalance,
}
# The token as configured by the operator does not match the chain: the job waits for a fix
# (configuration_error) instead of failing the customer's payment.
_CONFIGURATION_REASONS = frozenset(
    {
        "invalid_exact_evm_token_name_mismatch",
        "invalid_exact_evm_token_version_mismatch",
        "invalid_exact_evm_eip3009_not_supported",
        "asset_not_deployed_contract",
        "missing_eip712_domain",
    }
)
_SIGNATURE_REASONS = frozenset(
    {"invalid_exact_evm_payload_signature", "invalid_exact_evm_transaction_simulation_failed"}
)
_PERMANENT_CODES: dict[str, str] = {
    "invalid_exact_evm_payload_authorization_valid_after": "authorization_not_yet_valid",
    "invalid_exact_evm_payload_recipient_mismatch": "invalid_authorization",
    "invalid_exact_evm_payload_authorization_value_mismatch": "invalid_authorization",
    "network_mismatch": "unsupported_network",
    "invalid_exact_evm_failed_to_get_network_config": "unsupported_network",
    "invalid_exact_evm_payload_undeployed_smart_wallet": "unsupported_payer_wallet",
    "eip6492_factory_not_allowed": "unsupported_payer_wallet",
    "invalid_exact_evm_transfer_event_mismatch": "settlement_mismatch",
}


class X402ExactRail:
    name = "x402"

    def __init__(
        self,
        *,
        facilitator: Any,
        chain_id: int,
        network: str,
        token_name: str,
        token_version: str,
        validity_seconds: int,
        remote: bool,
    ) -> None:
        self._facilitator = facilitator
        self._chain_id = chain_id
        self._network = network
        self._token_name = token_name
        self._token_version = token_version
        self._validity_seconds = validity_seconds
        self._remote = remote

    @classmethod
    def from_settings(cls) -> X402ExactRail:
        return cls(
            facilitator=_facilitator_from_settings(),
            chain_id=settings.CHAIN_ID,
            network=settings.CHAIN_NETWORK,
            token_name=settings.TOKEN_EIP712_NAME,
            token_version=settings.TOKEN_EIP712_VERSION,
            validity_seconds=settings.AUTOPAY_AUTHORIZATION_VALIDITY_SECONDS,
            remote=bool(settings.X402_FACILITATOR_URL),
        )

    # --- building blocks ------------------------------------------------------------------

    def requirements(self, intent: PaymentIntent) -> PaymentRequirements:
        return PaymentRequirements(
            scheme="exact",
            network=intent.network,
            asset=to_checksum_address(intent.token_address),
            amount=str(intent.amount_atomic),
            pay_to=to_checksum_address(intent.recipient),
            max_timeout_seconds=self._validity_seconds,
            extra={"name": self._token_name, "version": self._token_version},
        )

    def authorization(self, intent: PaymentIntent, *, now: int) -> TransferAuthorization:
        return TransferAuthorization(
            token_address=to_checksum_address(intent.token_address),
            chain_id=self._chain_id,
            token_name=self._token_name,
            token_version=self._token_version,
            payer=to_checksum_address(intent.payer),
            recipient=to_checksum_address(intent.recipient),
            value=intent.amount_atomic,
            valid_after=now - VALID_AFTER_SKEW_SECONDS,
            valid_before=now + self._validity_seconds,
            nonce=intent.nonce,
        )

    # --- PaymentRail ----------------------------------------------------------------------

    def reconcile(self, intent: PaymentIntent) -> Settlement | None:
        """Ask the chain whether this period was already paid (by a crashed or racing attempt)."""
        if intent.network != self._network:
            raise errors.UnsupportedNetwork(
                f"payment is on {intent.network}, this engine pays on {self._network}"
            )
        if chain.authorization_used(intent.token_address, intent.payer, intent.nonce):
            found = chain.find_authorization_transaction(
                intent.token_address,
                intent.payer,
                intent.nonce,
                from_block=max(intent.search_from_block - 10, 0)
                if intent.search_from_block is not None
                else None,
            )
            if found is None:
                raise errors.AuthorizationCanceled(
                    "the payer canceled this period's authorization on-chain"
                )
            return Settlement(transaction_hash=found[0], block_number=found[1], reconciled=True)
        if intent.transaction_hash and chain.transaction_known(intent.transaction_hash):
            receipt = chain.transaction_receipt(intent.transaction_hash)
            if receipt is None:
                # Broadcast and still pending: wait for it instead of sending a second one.
                raise errors.SettlementPending(
                    f"transaction {intent.transaction_hash} is still pending"
                )
        return None

    def pay(self, intent: PaymentIntent, hooks: PaymentHooks) -> Settlement:
        now = int(time.time())
        authorization = self.authorization(intent, now=now)
        hooks.prepared(
            nonce=authorization.nonce,
            valid_after=authorization.valid_after,
            valid_before=authorization.valid_before,
            # Where a later search for this authorization's transaction may start.
            search_from_block=intent.search_from_block or chain.recent_block_number(),
        )
        signature = hooks.sign(authorization)
        hooks.progress(Progress.SIGNED)

        requirements = self.requirements(intent)
        payload = PaymentPayload(
            x402_version=2,
            payload={
                "authorization": {
                    "from": authorization.payer,
                    "to": authorization.recipient,
                    "value": str(authorization.value),
                    "validAfter": str(authorization.valid_after),
                    "validBefore": str(authorization.valid_before),
                    "nonce": authorization.nonce,
                },
                "signature": signature,
            },
            accepted=requirements,
        )
        context = SettlementContext(
            on_signed=hooks.signed_transaction, on_unsent=hooks.unsent_transaction
        )
        with settlement_context(context):
            verified = self._call("verify", payload, requirements, context)
            if not verified.is_valid:
                return self._refused(
                    intent, verified.invalid_reason, verified.invalid_message, context
                )
            if self._remote:
                hooks.progress(Progress.SUBMITTED)
            settled = self._call("settle", payload, requirements, context)
        if settled.transaction and self._remote:
            hooks.signed_transaction(settled.transaction)
        if not settled.success:
            return self._refused(intent, settled.error_reason, settled.error_message, context)
        # A fee-bump replacement may be the one that landed (the SDK knows only the first).
        landed = context.landed_hash or settled.transaction
        receipt = chain.transaction_receipt(landed)
        if self._remote and (
            receipt is None
            or int(receipt["status"]) != 1
            or not chain.authorization_used(intent.token_address, intent.payer, authorization.nonce)
        ):
            # A remote facilitator's word is not proof: the chain must show the transfer.
            raise errors.SettlementPending(
                f"facilitator reported {settled.transaction} settled; not yet seen on-chain"
            )
        hooks.progress(Progress.CONFIRMED)
        return _settlement_from_receipt(landed, receipt)

    # --- helpers --------------------------------------------------------------------------

    def _domain_differs(self, intent: PaymentIntent) -> bool:
        on_chain = chain.domain_separator(intent.token_address)
        return on_chain is not None and on_chain != chain.expected_domain_separator(
            name=self._token_name,
            version=self._token_version,
            chain_id=self._chain_id,
            token_address=intent.token_address,
        )

    def _call(
        self,
        method: str,
        payload: PaymentPayload,
        requirements: PaymentRequirements,
        context: SettlementContext,
    ) -> Any:
        try:
            return getattr(self._facilitator, method)(payload, requirements)
        except errors.PaymentError:
            raise
        except Exception as exc:
            if context.transport_error is not None or chain.is_transport_error(exc):
                raise errors.RpcUnavailable(f"chain RPC unavailable during {method}") from exc
            if self._remote:
                raise _facilitator_error(method, exc) from exc
            raise

    def _refused(
        self,
        intent: PaymentIntent,
        reason: str | None,
        message: str | None,
        context: SettlementContext,
    ) -> Settlement:
        reason = reason or "unknown"
        detail = f"{reason}: {message}" if message else reason
        # The SDK turns every exception of our relayer into a reason string; decide on the
        # original exception first.
        original = context.error
        if isinstance(original, (errors.PaymentError, SoftTimeLimitExceeded, DatabaseError)) or (
            original is not None and type(original).__name__ == "LeaseLost"
        ):
            # Ours, not the payment's: a lost lease or the database gone is never a refusal.
            raise original
        if isinstance(original, RedisError):
            raise errors.RedisUnavailable(
                f"relayer bookkeeping unavailable: {type(original).__name__}"
            ) from original
        if context.transport_error is not None:
            raise errors.RpcUnavailable(f"chain RPC unavailable ({reason})")
        # Whatever the reason, the period may already be paid (a racing attempt won, or our
        # own broadcast landed): the chain decides before anything is called a failure.
        settlement = self.reconcile(intent)
        if settlement is not None:
            return settlement
        if context.sent_hashes:
            receipt = chain.transaction_receipt(context.sent_hashes[-1])
            if receipt is None:
                raise errors.SettlementPending(detail)
            if int(receipt["status"]) == 1:
                # Mined and successful, yet not seen as used: let the next attempt look again.
                raise errors.SettlementPending(detail)
        if reason == "settlement_pending":
            raise errors.SettlementPending(detail)
        if reason in _CONFIGURATION_REASONS:
            raise errors.ConfigurationError(f"token misconfigured ({detail})")
        if reason in _SIGNATURE_REASONS and self._domain_differs(intent):
            # Our signature is fine for the domain we were told; the token has another one.
            raise errors.ConfigurationError(
                "the token's EIP-712 domain differs from TOKEN_EIP712_NAME/TOKEN_EIP712_VERSION "
                f"({detail})"
            )
        if reason in _PERMANENT_REASONS:
            raise _PERMANENT_REASONS[reason](detail)
        if reason in _PERMANENT_CODES:
            raise errors.PermanentPaymentError(detail, code=_PERMANENT_CODES[reason])
        text = (message or "").lower()
        if "nonce" in text and ("too low" in text or "taken" in text or "underpriced" in text):
            raise errors.NonceRace(detail)
        if "transfer amount exceeds balance" in text:
            raise errors.InsufficientBalance(detail)
        if reason == "transaction_failed" and context.sent_hashes:
            raise errors.SettlementReverted(detail)
        if reason in ("invalid_exact_evm_transaction_simulation_failed", "transaction_failed"):
            raise errors.SettlementFailed(detail)
        raise errors.FacilitatorRejected(detail)


def _settlement_from_receipt(tx_hash: str, receipt: dict[str, Any] | None) -> Settlement:
    """A settlement with its block and cost, as far as the receipt tells them."""
    if receipt is None:
        return Settlement(transaction_hash=tx_hash, block_number=None)
    gas_price = receipt.get("effectiveGasPrice")
    return Settlement(
        transaction_hash=tx_hash,
        block_number=int(receipt["blockNumber"]),
        gas_used=int(receipt["gasUsed"]) if receipt.get("gasUsed") is not None else None,
        effective_gas_price=int(gas_price) if gas_price is not None else None,
    )


def _facilitator_error(method: str, exc: Exception) -> errors.PaymentError:
    text = str(exc)
    if "failed (401" in text or "failed (403" in text:
        # Our credentials, not the customer's payment (X402_FACILITATOR_AUTH_HEADER).
        return errors.ConfigurationError(
            f"facilitator {method} refused our credentials: {text[:200]}"
        )
    if "failed (5" in text or "failed (429" in text or "failed (408" in text:
        return errors.FacilitatorUnavailable(f"facilitator {method} answered {text[:200]}")
    if isinstance(exc, httpx.HTTPError):
        return errors.FacilitatorUnavailable(
            f"facilitator {method} unreachable: {type(exc).__name__}"
        )
    return errors.FacilitatorRejected(f"facilitator {method} refused: {text[:300]}")


class _InProcessFacilitator:
    """The SDK's exact-EVM facilitator mechanism with our relayer, restricted to our network."""

    def __init__(self) -> None:
        self._scheme = ExactEvmFacilitatorScheme(
            get_relayer(),
            ExactEvmSchemeConfig(simulate_in_settle=False),
            pending_store=_NoPendingStore(),
        )

    def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
        return self._scheme.verify(payload, requirements)

    def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
        return self._scheme.settle(payload, requirements)


def _facilitator_from_settings() -> Any:
    if settings.X402_FACILITATOR_URL:

        class _HeaderAuth:
            def __init__(self, value: str) -> None:
                self._headers = {"Authorization": value}

            def get_auth_headers(self) -> AuthHeaders:
                return AuthHeaders(
                    verify=self._headers, settle=self._headers, supported=self._headers
                )

        header = settings.X402_FACILITATOR_AUTH_HEADER
        return HTTPFacilitatorClientSync(
            FacilitatorConfig(
                url=settings.X402_FACILITATOR_URL,
                timeout=settings.X402_FACILITATOR_TIMEOUT_SECONDS,
                auth_provider=_HeaderAuth(header) if header else None,
            )
        )
    return _InProcessFacilitator()
