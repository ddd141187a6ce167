"""The x402 HTTP handshake: the engine is the client of a service's paid endpoint.

request -> 402 with the service's payment requirements -> check them against the
subscription (scheme, network, asset, payTo = the recipient, amount at most the
subscription's; otherwise ``requirements_mismatch`` and nothing is signed) -> sign the
authorization with the period's derived nonce -> retry with the payment header -> the
service's own facilitator settles -> we record its settlement response and confirm on chain
that *our nonce* was used (its AuthorizationUsed event) before the payment is completed.

What comes from the x402 SDK: parsing the 402 (PAYMENT-REQUIRED header), encoding the
PAYMENT-SIGNATURE header, decoding the PAYMENT-RESPONSE receipt, and the types. What is ours,
and why: the SDK client signs with a random nonce, so a retry after a timeout could pay twice;
with the derived nonce the token contract accepts at most one settlement per period, and every
attempt asks the chain first (reconcile), so a service that settles and then times out, or a
worker killed after the service settled, is recorded once, never paid again. The word of the
service is never proof: only the chain completes a payment.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import httpx
from django.conf import settings
from eth_utils import to_checksum_address
from x402 import x402ClientSync
from x402.http import x402HTTPClientSync
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse

from autopay.chain import client as chain
from autopay.rails.authorization import TransferAuthorization
from autopay.rails.base import PaymentHooks, PaymentIntent, Progress, Settlement
from autopay.rails.x402_exact import VALID_AFTER_SKEW_SECONDS, X402ExactRail
from core.networks import active_network
from subscriptions import errors
from subscriptions.resources import ResourceUrlRefused, resource_destination

logger = logging.getLogger(__name__)

# What the subscriber sees for every failure of the resource before a payment is sent.
RESOURCE_UNAVAILABLE = (
    "The service's paid endpoint is not available (not allowed, unreachable, or it did not ask "
    "for an x402 payment); the operator's log has the details."
)

_REFUSAL_REASONS: dict[str, type[errors.PaymentError]] = {
    "invalid_exact_evm_insufficient_balance": errors.InsufficientBalance,
    "insufficient_funds": errors.InsufficientBalance,
    "invalid_exact_evm_payload_signature": errors.InvalidSignature,
    "invalid_exact_evm_payload_authorization_valid_before": errors.AuthorizationExpired,
}


class X402HttpRail:
    name = "x402-http"

    def __init__(
        self,
        *,
        exact: X402ExactRail,
        chain_id: int,
        token_name: str,
        token_version: str,
        validity_seconds: int,
        timeout_seconds: float,
    ) -> None:
        self._exact = exact
        self._chain_id = chain_id
        self._token_name = token_name
        self._token_version = token_version
        self._validity_seconds = validity_seconds
        self._timeout = timeout_seconds
        self._http = x402HTTPClientSync(x402ClientSync())

    @classmethod
    def from_settings(cls) -> X402HttpRail:
        network = active_network()
        return cls(
            exact=X402ExactRail.from_settings(),
            chain_id=network.chain_id,
            token_name=network.token_name,
            token_version=network.token_version,
            validity_seconds=settings.AUTOPAY_AUTHORIZATION_VALIDITY_SECONDS,
            timeout_seconds=settings.AUTOPAY_RESOURCE_TIMEOUT_SECONDS,
        )

    # --- PaymentRail ----------------------------------------------------------------------

    def reconcile(self, intent: PaymentIntent) -> Settlement | None:
        """The chain decides, as for any x402 payment: was this period's nonce used?"""
        return self._exact.reconcile(intent)

    def pay(self, intent: PaymentIntent, hooks: PaymentHooks) -> Settlement:
        required = self._payment_required(intent)
        requirement = self.select_requirement(intent, required)
        authorization = self._authorization(intent, requirement)
        hooks.prepared(
            nonce=authorization.nonce,
            valid_after=authorization.valid_after,
            valid_before=authorization.valid_before,
            search_from_block=intent.search_from_block or chain.recent_block_number(),
        )
        signature = hooks.sign(authorization)
        hooks.progress(Progress.SIGNED)
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
            accepted=requirement,
            resource=required.resource,
        )
        headers = self._http.encode_payment_signature_header(payload)
        hooks.progress(Progress.SUBMITTED)
        try:
            response = self._request(intent, headers)
        except httpx.HTTPError as exc:
            # The service may have settled before failing to answer: never pay blindly again;
            # the next attempt asks the chain first and re-sends the same nonce at most.
            raise errors.ServiceNotSettled(
                f"{_where(intent)} did not answer after the payment was sent "
                f"({type(exc).__name__}); the chain decides on the next attempt"
            ) from exc
        receipt = self._settle_response(response)
        service_receipt = {
            "url": intent.resource_url,
            "status": response.status_code,
            "amountAtomic": str(authorization.value),
            "settleResponse": receipt.model_dump(by_alias=True, exclude_none=True)
            if receipt is not None
            else None,
        }
        if receipt is not None and receipt.success and receipt.transaction:
            hooks.signed_transaction(receipt.transaction)
        settlement = self._on_chain(intent, authorization, receipt)
        if settlement is not None:
            reported = receipt.transaction if receipt is not None else ""
            if reported and reported.lower() != settlement.transaction_hash.lower():
                service_receipt["reportedTransaction"] = reported
            hooks.progress(Progress.CONFIRMED)
            return replace(settlement, reconciled=False, service_receipt=service_receipt)
        if 200 <= response.status_code < 300:
            raise errors.ServiceNotSettled(
                f"{_where(intent)} answered {response.status_code} but the chain shows no "
                f"settlement of nonce {authorization.nonce}"
            )
        if response.status_code >= 500:
            raise errors.ServiceNotSettled(
                f"{_where(intent)} answered {response.status_code} after the payment was sent"
            )
        reason = (receipt.error_reason if receipt is not None else None) or self._refusal(response)
        error = _REFUSAL_REASONS.get(reason or "", errors.ResourceRefused)
        raise error(
            f"{_where(intent)} refused the payment ({response.status_code}"
            + (f", {reason}" if reason else "")
            + ")"
        )

    # --- the handshake --------------------------------------------------------------------

    def _request(self, intent: PaymentIntent, headers: dict[str, str]) -> httpx.Response:
        """One request to the resource, checked against the allow-list now (not only when the
        subscription was saved) and sent to the address that was checked."""
        try:
            destination = resource_destination(intent.resource_url)
        except ResourceUrlRefused as exc:
            raise _unavailable(intent, f"refused: {exc.message}") from exc
        address = destination.addresses[0]
        literal = f"[{address}]" if ":" in address else address
        url = f"{destination.scheme}://{literal}:{destination.port}{destination.path}"
        with httpx.Client(timeout=self._timeout, follow_redirects=False) as client:
            return client.request(
                intent.resource_method or "GET",
                url,
                headers={**headers, "host": destination.host_header},
                # TLS still verifies the certificate against the URL's host name.
                extensions={"sni_hostname": destination.host},
            )

    def _payment_required(self, intent: PaymentIntent) -> PaymentRequired:
        """The service's 402. Anything else before a payment is sent is one generic
        ``resource_unavailable`` for the subscriber (the detail, which could tell open, closed
        and other services' ports apart, goes to the operator's log)."""
        try:
            response = self._request(intent, {})
        except httpx.HTTPError as exc:
            raise _unavailable(intent, f"unreachable: {type(exc).__name__}") from exc
        if response.status_code != 402:
            raise _unavailable(intent, f"answered {response.status_code} instead of 402")
        try:
            required = self._http.get_payment_required_response(
                lambda name: response.headers.get(name), _json_or_none(response)
            )
        except Exception as exc:
            raise _unavailable(
                intent, f"answered 402 without readable x402 requirements ({type(exc).__name__})"
            ) from exc
        if not isinstance(required, PaymentRequired):
            raise errors.RequirementsMismatch(
                f"{_where(intent)} speaks x402 v{required.x402_version}; only v2 "
                "(PAYMENT-REQUIRED / PAYMENT-SIGNATURE headers) is supported"
            )
        return required

    def select_requirement(
        self, intent: PaymentIntent, required: PaymentRequired
    ) -> PaymentRequirements:
        """The first requirement that pays exactly this subscription; else the reason the
        first exact-scheme one does not."""
        reasons = []
        for requirement in required.accepts:
            reason = self._mismatch(intent, requirement)
            if reason is None:
                return requirement
            reasons.append(reason)
        raise errors.RequirementsMismatch(
            f"{_where(intent)} asks for a payment this subscription does not make: "
            + ("; ".join(reasons[:3]) or "no payment option")
            + "; nothing was signed"
        )

    def _mismatch(self, intent: PaymentIntent, requirement: PaymentRequirements) -> str | None:
        if requirement.scheme != "exact":
            return f"scheme {requirement.scheme} (only exact)"
        if requirement.network != intent.network:
            return f"network {requirement.network}, the subscription's is {intent.network}"
        if not _same_address(requirement.asset, intent.token_address):
            return f"asset {requirement.asset}, the subscription pays {intent.token_address}"
        if not _same_address(requirement.pay_to, intent.recipient):
            return f"payTo {requirement.pay_to}, the subscription's recipient is {intent.recipient}"
        try:
            amount = int(requirement.amount)
        except ValueError:
            return f"amount {requirement.amount!r} is not an integer"
        if amount <= 0 or amount > intent.amount_atomic:
            return f"amount {amount}, the subscription pays at most {intent.amount_atomic}"
        extra = requirement.extra or {}
        if (
            extra.get("name", self._token_name) != self._token_name
            or extra.get("version", self._token_version) != self._token_version
        ):
            return f"token domain {extra.get('name')}/{extra.get('version')}"
        return None

    def _authorization(
        self, intent: PaymentIntent, requirement: PaymentRequirements
    ) -> TransferAuthorization:
        now = int(time.time())
        window = min(
            requirement.max_timeout_seconds or self._validity_seconds, self._validity_seconds
        )
        return TransferAuthorization(
            token_address=to_checksum_address(intent.token_address),
            chain_id=self._chain_id,
            token_name=self._token_name,
            token_version=self._token_version,
            payer=to_checksum_address(intent.payer),
            recipient=to_checksum_address(intent.recipient),
            value=int(requirement.amount),
            valid_after=now - VALID_AFTER_SKEW_SECONDS
            if intent.valid_after is None
            else intent.valid_after,
            valid_before=now + window if intent.valid_before is None else intent.valid_before,
            nonce=intent.nonce,
        )

    def _settle_response(self, response: httpx.Response) -> SettleResponse | None:
        try:
            return self._http.get_payment_settle_response(lambda name: response.headers.get(name))
        except Exception:
            return None

    def _refusal(self, response: httpx.Response) -> str | None:
        try:
            required = self._http.get_payment_required_response(
                lambda name: response.headers.get(name), _json_or_none(response)
            )
        except Exception:
            return None
        return getattr(required, "error", None)

    def _on_chain(
        self,
        intent: PaymentIntent,
        authorization: TransferAuthorization,
        receipt: SettleResponse | None,
    ) -> Settlement | None:
        """Our nonce's settlement on chain, whatever the service said (None: not settled)."""
        reported = receipt.transaction if receipt is not None and receipt.transaction else ""
        return self._exact.reconcile(
            replace(intent, nonce=authorization.nonce, transaction_hash=reported)
        )


def _unavailable(intent: PaymentIntent, detail: str) -> errors.ResourceUnavailable:
    logger.warning(
        "x402 resource of payment %s unavailable: %s %s %s",
        intent.payment_id,
        intent.resource_method,
        intent.resource_url,
        detail,
    )
    return errors.ResourceUnavailable(RESOURCE_UNAVAILABLE)


def _where(intent: PaymentIntent) -> str:
    return f"{intent.resource_method} {intent.resource_url}"


def _same_address(left: str, right: str) -> bool:
    return str(left).lower() == str(right).lower()


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json() if response.content else None
    except ValueError:
        return None
