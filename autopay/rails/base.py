"""The rail interface the engine depends on: plain data in (PaymentIntent), plain data out
(Settlement). A rail never sees a model, so it can be tested without a database."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from autopay.rails.authorization import TransferAuthorization


class Progress(IntEnum):
    """A job's progress at each step of a payment, as the baseline reported it."""

    VALIDATED = 10
    SIGNED = 30
    SUBMITTED = 50
    CONFIRMED = 80
    RECORDED = 100


@dataclass(frozen=True)
class PaymentIntent:
    """One billing period's payment, as a rail needs it."""

    payment_id: int
    subscription_id: int
    network: str  # CAIP-2, e.g. eip155:8453
    token_address: str
    payer: str
    recipient: str
    amount_atomic: int
    # The EIP-3009 nonce derived from the payment: the chain refuses a second settlement.
    nonce: str
    # Where a search for this authorization's transaction may start (None: not yet signed).
    search_from_block: int | None = None
    # The transaction recorded for it before broadcast by an earlier attempt, if any.
    transaction_hash: str = ""
    # When its settlement was last submitted (Unix time): the transaction broadcast, or /settle
    # sent to a remote facilitator, which may still be working on it for a while after.
    submitted_at: float | None = None
    # The validity window the payer signed (pre-signed subscriptions); None: now-based.
    valid_after: int | None = None
    valid_before: int | None = None
    # x402 HTTP: the service's paid endpoint (the period is paid by requesting it).
    resource_url: str = ""
    resource_method: str = "GET"


@dataclass(frozen=True)
class Settlement:
    """A confirmed on-chain settlement."""

    transaction_hash: str
    block_number: int | None
    reconciled: bool = False  # found on-chain rather than sent by this attempt
    # x402 HTTP: what the service answered (its settlement response and what it charged).
    service_receipt: dict[str, Any] | None = None
    # From the receipt, when the rail has it: what the settlement cost in gas (wei per gas).
    gas_used: int | None = None
    effective_gas_price: int | None = None


class PaymentHooks(Protocol):
    """What the engine does for a rail while it pays: record, report, and sign for the payer."""

    def prepared(
        self, *, nonce: str, valid_after: int, valid_before: int, search_from_block: int | None
    ) -> None: ...
    def sign(self, authorization: TransferAuthorization) -> str: ...
    def progress(self, step: Progress) -> None: ...
    def signed_transaction(self, tx_hash: str) -> None: ...
    def unsent_transaction(self, tx_hash: str) -> None: ...
    def settle_requested(self) -> None:
        """Before /settle is sent to a remote facilitator: the payment is in flight from now."""

    def settle_refused(self) -> None:
        """The facilitator stated it did not settle (or never got the request): no longer in
        flight."""


class PaymentRail(Protocol):
    name: str

    def reconcile(self, intent: PaymentIntent) -> Settlement | None:
        """If this payment was already settled on-chain, return that settlement."""

    def pay(self, intent: PaymentIntent, hooks: PaymentHooks) -> Settlement:
        """Sign, verify, settle and confirm; raise a PaymentError on failure."""
