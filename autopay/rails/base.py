"""The rail interface the engine depends on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from subscriptions.models import Payment


@dataclass(frozen=True)
class Settlement:
    """A confirmed on-chain settlement."""

    transaction_hash: str
    block_number: int | None
    reconciled: bool = False  # found on-chain rather than sent by this attempt


class PaymentHooks(Protocol):
    def prepared(
        self, *, nonce: str, valid_after: int, valid_before: int, search_from_block: int | None
    ) -> None: ...
    def progress(self, percent: int) -> None: ...
    def signed_transaction(self, tx_hash: str) -> None: ...
    def unsent_transaction(self, tx_hash: str) -> None: ...


class PaymentRail(Protocol):
    name: str

    def reconcile(self, payment: Payment) -> Settlement | None:
        """If this payment was already settled on-chain, return that settlement."""

    def pay(self, payment: Payment, hooks: PaymentHooks) -> Settlement:
        """Sign, verify, settle and confirm; raise a PaymentError on failure."""
