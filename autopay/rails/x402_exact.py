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
  the transaction instead of paying again;
- with a remote facilitator, what its /settle answer proves: once /settle is sent only a
  refusal it states before broadcasting can fail the payment; a lost or garbled answer leaves
  the payment in flight, the chain decides, and no second /settle is sent before the first
  one's deadline (X402_FACILITATOR_SETTLE_DEADLINE_SECONDS).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError
from eth_account import Account
from eth_utils import to_checksum_address
from redis.exceptions import RedisError
from x402.http import AuthHeaders, FacilitatorConfig, HTTPFacilitatorClientSync
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme
from x402.mechanisms.evm.exact.facilitator import ExactEvmSchemeConfig
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from autopay.chain import client as chain
from autopay.chain.abi import AUTHORIZATION_USED_TOPIC
from autopay.chain.relayer import (
    SettlementContext,
    get_relayer,
    relayer_keys,
    settlement_context,
)
from autopay.rails.authorization import TransferAuthorization
from autopay.rails.base import PaymentHooks, PaymentIntent, Progress, Settlement
from core.networks import active_network
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
_PERMANENT_CODES: dict[str, type[errors.PaymentError]] = {
    "invalid_exact_evm_payload_authorization_valid_after": errors.AuthorizationNotYetValid,
    "invalid_exact_evm_payload_recipient_mismatch": errors.InvalidAuthorization,
    "invalid_exact_evm_payload_authorization_value_mismatch": errors.InvalidAuthorization,
    "network_mismatch": errors.UnsupportedNetwork,
    "invalid_exact_evm_failed_to_get_network_config": errors.UnsupportedNetwork,
    "invalid_exact_evm_payload_undeployed_smart_wallet": errors.UnsupportedPayerWallet,
    "eip6492_factory_not_allowed": errors.UnsupportedPayerWallet,
    "invalid_exact_evm_transfer_event_mismatch": errors.SettlementMismatch,
}
# What a facilitator states before it broadcasts anything (its verify step, which settle
# repeats): only these, in a well-formed settle response, fail a payment once /settle was sent.
# transaction_failed, settlement_pending, a transfer event mismatch or an unknown reason may
# come after a broadcast: the chain decides those.
_PRE_SETTLEMENT_REASONS = frozenset(
    {
        *_PERMANENT_REASONS,
        *_CONFIGURATION_REASONS,
        *_SIGNATURE_REASONS,
        *(set(_PERMANENT_CODES) - {"invalid_exact_evm_transfer_event_mismatch"}),
        "invalid_exact_evm_nonce_already_used",
        "invalid_exact_evm_failed_to_get_asset_info",
        "invalid_exact_evm_failed_to_verify_signature",
        "unsupported_scheme",
    }
)
# The start of a ConfigurationError's message when the facilitator refuses our credentials
# (/health names the facilitator by it).
FACILITATOR_CREDENTIALS_REFUSED = "facilitator refused our credentials"


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
        settle_deadline_seconds: float = 120.0,
    ) -> None:
        self._facilitator = facilitator
        self._chain_id = chain_id
        self._network = network
        self._token_name = token_name
        self._token_version = token_version
        self._validity_seconds = validity_seconds
        self._remote = remote
        self._settle_deadline_seconds = settle_deadline_seconds

    @classmethod
    def from_settings(cls) -> X402ExactRail:
        """The rail of the network being paid on (core.networks.use_network)."""
        network = active_network()
        return cls(
            facilitator=_facilitator_from_settings(),
            chain_id=network.chain_id,
            network=network.network,
            token_name=network.token_name,
            token_version=network.token_version,
            validity_seconds=settings.AUTOPAY_AUTHORIZATION_VALIDITY_SECONDS,
            remote=bool(settings.X402_FACILITATOR_URL),
            # A settle cannot be over at the facilitator before our own request gave up on it.
            settle_deadline_seconds=max(
                settings.X402_FACILITATOR_SETTLE_DEADLINE_SECONDS,
                settings.X402_FACILITATOR_TIMEOUT_SECONDS,
            ),
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
            valid_after=now - VALID_AFTER_SKEW_SECONDS
            if intent.valid_after is None
            else intent.valid_after,
            valid_before=now + self._validity_seconds
            if intent.valid_before is None
            else intent.valid_before,
            nonce=intent.nonce,
        )

    # --- PaymentRail ----------------------------------------------------------------------

    def reconcile(self, intent: PaymentIntent) -> Settlement | None:
        """Ask the chain whether this period was already paid (by a crashed or racing attempt).

        With a remote facilitator, a /settle sent less than the settle deadline ago may still
        be running there: until the deadline, no new settle may start (SettlementUnconfirmed).
        """
        settlement = self._find_on_chain(intent)
        sent_at = intent.submitted_at
        if (
            settlement is None
            and self._remote
            and sent_at is not None
            and time.time() < sent_at + self._settle_deadline_seconds
        ):
            raise self._unconfirmed(
                "a settle sent earlier may still be running at the facilitator; the chain "
                "does not show it yet",
                sent_at=sent_at,
            )
        return settlement

    def _find_on_chain(self, intent: PaymentIntent) -> Settlement | None:
        """The period's settlement as the chain shows it, by the derived nonce
        (authorizationState, then the AuthorizationUsed event), or None."""
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
            return _found_settlement(found[0], found[1])
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
                return self._settle_remotely(intent, payload, requirements, hooks, context)
            settled = self._call("settle", payload, requirements, context)
        if not settled.success:
            return self._refused(intent, settled.error_reason, settled.error_message, context)
        # A fee-bump replacement may be the one that landed (the SDK knows only the first).
        landed = context.landed_hash or settled.transaction
        receipt = chain.transaction_receipt(landed)
        hooks.progress(Progress.CONFIRMED)
        return _settlement_from_receipt(landed, receipt)

    # --- a remote facilitator's /settle -----------------------------------------------------

    def _settle_remotely(
        self,
        intent: PaymentIntent,
        payload: PaymentPayload,
        requirements: PaymentRequirements,
        hooks: PaymentHooks,
        context: SettlementContext,
    ) -> Settlement:
        """/settle at a remote facilitator. From the moment it is sent, only a refusal the
        facilitator states before broadcasting can fail the payment; any other outcome leaves
        it in flight and the chain decides (``_settlement_in_flight``)."""
        hooks.settle_requested()
        sent_at = time.time()
        try:
            settled = self._facilitator.settle(payload, requirements)
        except (errors.PaymentError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:
            response = self._facilitator.last_response
            not_run = _settle_not_run(exc, response)
            if not_run is not None:
                hooks.settle_refused()
                raise not_run from exc
            stated = _stated_refusal(response)
            if stated is None:
                return self._settlement_in_flight(
                    intent, f"facilitator settle: {_describe(exc, response)}", sent_at=sent_at
                )
            settled = stated
        if settled.transaction:
            hooks.signed_transaction(settled.transaction)
        if settled.success:
            return self._confirm_remote_settlement(intent, settled.transaction, hooks, sent_at)
        reason = settled.error_reason or "unknown"
        if reason in _PRE_SETTLEMENT_REASONS:
            hooks.settle_refused()
            return self._refused(intent, reason, settled.error_message, context)
        detail = f"facilitator settle answered {reason}" + (
            f": {settled.error_message[:200]}" if settled.error_message else ""
        )
        return self._settlement_in_flight(
            intent, detail, sent_at=sent_at, tx_hash=settled.transaction
        )

    def _confirm_remote_settlement(
        self, intent: PaymentIntent, tx_hash: str, hooks: PaymentHooks, sent_at: float
    ) -> Settlement:
        """A remote facilitator's word is not proof: the chain must show the transfer."""
        receipt = chain.transaction_receipt(tx_hash) if tx_hash else None
        if (
            receipt is not None
            and int(receipt["status"]) == 1
            and chain.authorization_used(intent.token_address, intent.payer, intent.nonce)
        ):
            hooks.progress(Progress.CONFIRMED)
            return Settlement(transaction_hash=tx_hash, block_number=int(receipt["blockNumber"]))
        return self._settlement_in_flight(
            intent,
            f"facilitator reported {tx_hash or 'no transaction'} settled; not yet seen on-chain",
            sent_at=sent_at,
            tx_hash=tx_hash,
        )

    def _settlement_in_flight(
        self, intent: PaymentIntent, detail: str, *, sent_at: float, tx_hash: str = ""
    ) -> Settlement:
        """/settle was sent and its answer settles nothing: ask the chain by the derived nonce
        and return what it shows; otherwise the payment stays in flight."""
        settlement = self._find_on_chain(intent)
        if settlement is not None:
            return settlement
        if tx_hash:
            receipt = chain.transaction_receipt(tx_hash)
            if receipt is None and chain.transaction_known(tx_hash):
                raise errors.SettlementPending(f"{detail}; {tx_hash} is pending")
            if receipt is not None and int(receipt["status"]) != 1:
                raise errors.SettlementReverted(f"{detail}; {tx_hash} reverted")
        raise self._unconfirmed(detail, sent_at=sent_at)

    def _unconfirmed(self, detail: str, *, sent_at: float) -> errors.SettlementUnconfirmed:
        deadline = sent_at + self._settle_deadline_seconds
        return errors.SettlementUnconfirmed(
            f"{detail}; no other settle before {time.strftime('%H:%M:%S', time.gmtime(deadline))}"
            " UTC",
            sent_at=sent_at,
            deadline=deadline,
        )

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
        except (errors.PaymentError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:
            if context.transport_error is not None or chain.is_transport_error(exc):
                raise errors.RpcUnavailable(f"chain RPC unavailable during {method}") from exc
            if self._remote:
                raise _facilitator_error(method, exc, self._facilitator.last_response) from exc
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
        settlement = self._find_on_chain(intent)
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
            raise _PERMANENT_CODES[reason](detail)
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


def _found_settlement(tx_hash: str, block_number: int) -> Settlement:
    """A settlement found on chain rather than sent by this attempt. The attempt that sent it
    never read its receipt (it was lost, or gave up waiting for a block), so the attempt that
    finds it records its cost, as for a settlement it sent itself: only when our relayer paid
    the gas for this payment alone. A batch transaction's gas is shared by all its payments,
    and a remote facilitator's is not ours."""
    receipt = chain.transaction_receipt(tx_hash)
    if receipt is None or not _paid_by_our_relayer_alone(receipt):
        return Settlement(transaction_hash=tx_hash, block_number=block_number, reconciled=True)
    return replace(_settlement_from_receipt(tx_hash, receipt), reconciled=True)


def _paid_by_our_relayer_alone(receipt: dict[str, Any]) -> bool:
    authorizations = sum(
        1
        for log in receipt.get("logs") or []
        if log["topics"] and "0x" + bytes(log["topics"][0]).hex() == AUTHORIZATION_USED_TOPIC
    )
    relayers = {str(Account.from_key(key).address).lower() for key in relayer_keys()}
    return authorizations == 1 and str(receipt.get("from", "")).lower() in relayers


def _facilitator_error(
    method: str, exc: Exception, response: httpx.Response | None
) -> errors.PaymentError:
    """The error of a facilitator request that moves no money (/verify) and failed."""
    status = response.status_code if response is not None else None
    if status in (401, 403):
        return _credentials_refused(method, status)
    if isinstance(exc, httpx.HTTPError) or status is None:
        return errors.FacilitatorUnavailable(
            f"facilitator {method} unreachable: {_describe(exc, response)}"
        )
    if status == 200 or status >= 500 or status in (408, 425, 429):
        # Overloaded, or an answer that is not one (a proxy's page): it may work next time.
        return errors.FacilitatorUnavailable(
            f"facilitator {method} answered {_describe(exc, response)}"
        )
    return errors.FacilitatorRejected(f"facilitator {method} refused: {_describe(exc, response)}")


def _credentials_refused(method: str, status: int) -> errors.ConfigurationError:
    # Our credentials, not the customer's payment: the job waits for the operator.
    return errors.ConfigurationError(
        f"{FACILITATOR_CREDENTIALS_REFUSED} (HTTP {status} to /{method}); check "
        "X402_FACILITATOR_AUTH_HEADER"
    )


def _settle_not_run(exc: Exception, response: httpx.Response | None) -> errors.PaymentError | None:
    """The error of a /settle the facilitator surely did not run, or None when it may have:
    the connection was never made, or it refused our credentials (it checks them first)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return errors.FacilitatorUnavailable(
            f"facilitator settle unreachable: {type(exc).__name__}"
        )
    if response is not None and response.status_code in (401, 403):
        return _credentials_refused("settle", response.status_code)
    return None


def _stated_refusal(response: httpx.Response | None) -> SettleResponse | None:
    """A refusal the facilitator stated in a well-formed settle response sent with a status
    other than 200 (facilitators answer refusals with 400 and the response as the body)."""
    if response is None:
        return None
    try:
        answer = SettleResponse.model_validate_json(response.content)
    except (httpx.StreamError, ValueError):
        return None
    return None if answer.success else answer


def _describe(exc: Exception, response: httpx.Response | None) -> str:
    """A short account of a failed request: its status and the start of the body, or the
    exception's type (never a header: ours carry the credentials)."""
    if response is None or isinstance(exc, httpx.TransportError):
        return type(exc).__name__
    try:
        body = " ".join(response.text.split())
    except httpx.StreamError:
        body = ""
    return f"HTTP {response.status_code}" + (f" {body[:160]}" if body else "")


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


class _HeaderAuth:
    def __init__(self, value: str) -> None:
        self._headers = {"Authorization": value}

    def get_auth_headers(self) -> AuthHeaders:
        return AuthHeaders(verify=self._headers, settle=self._headers, supported=self._headers)


class _RemoteFacilitator:
    """The SDK's HTTP facilitator client on an httpx client of ours that keeps the last
    answer: for any status but 200 the SDK raises a bare ValueError, and what a /settle answer
    proves depends on its status and body."""

    def __init__(self, *, url: str, timeout: float, auth_header: str) -> None:
        self.last_response: httpx.Response | None = None
        http = httpx.Client(
            timeout=timeout, follow_redirects=True, event_hooks={"response": [self._remember]}
        )
        self._client = HTTPFacilitatorClientSync(
            FacilitatorConfig(
                url=url,
                timeout=timeout,
                auth_provider=_HeaderAuth(auth_header) if auth_header else None,
                http_client=http,
            )
        )

    def _remember(self, response: httpx.Response) -> None:
        self.last_response = response

    def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
        self.last_response = None
        return self._client.verify(payload, requirements)

    def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
        self.last_response = None
        return self._client.settle(payload, requirements)


def _facilitator_from_settings() -> Any:
    if settings.X402_FACILITATOR_URL:
        return _RemoteFacilitator(
            url=settings.X402_FACILITATOR_URL,
            timeout=settings.X402_FACILITATOR_TIMEOUT_SECONDS,
            auth_header=settings.X402_FACILITATOR_AUTH_HEADER,
        )
    return _InProcessFacilitator()
