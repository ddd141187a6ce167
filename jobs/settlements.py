"""Settlement transactions for operators: which payments went out in which transaction (a batch
settles many in one ``aggregate3`` call), what it cost and how it ended, with a link to the
network's block explorer. Payments grouped by ``transaction_hash``; gas and fee come from the
job attempts ledger (the attempt that sent the transaction that landed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.admin import AdminSite
from django.db.models import Count, Max, Min, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.safestring import SafeString

from core.console import money_text, status_badge, transaction_link
from jobs.console_pages import console_pages
from jobs.models import JobAttempt
from subscriptions.models import Payment
from subscriptions.selectors import payment_list

TRANSACTIONS_SHOWN = 100
WEI_PER_ETHER = Decimal(10**18)


@dataclass
class Settlement:
    transaction_hash: str
    network: str
    payments: int
    amount: Decimal
    decimals: int
    block_number: int | None
    first_sent_at: datetime | None
    last_completed_at: datetime | None
    statuses: dict[str, int] = field(default_factory=dict)
    gas_used: int | None = None
    fee_wei: Decimal | None = None

    @property
    def status(self) -> str:
        """completed (every payment in it recorded), failed, or pending (still waiting)."""
        if set(self.statuses) <= {Payment.Status.COMPLETED}:
            return "completed"
        if Payment.Status.FAILED in self.statuses:
            return "failed"
        return "pending"

    @property
    def badge(self) -> SafeString:
        return status_badge(self.status)

    @property
    def link(self) -> SafeString:
        return transaction_link(self.network, self.transaction_hash)

    @property
    def full_link(self) -> SafeString:
        return transaction_link(self.network, self.transaction_hash, short=False)

    @property
    def amount_text(self) -> str:
        return money_text(self.amount, decimals=self.decimals, network=self.network)

    @property
    def fee_text(self) -> str:
        if self.fee_wei is None:
            return "-"
        return f"{format((self.fee_wei / WEI_PER_ETHER).normalize(), 'f')} ETH"


def settlement_list(
    *, user: Any, transaction_hash: str | None = None, limit: int = TRANSACTIONS_SHOWN
) -> list[Settlement]:
    """The latest settlement transactions (newest first), each with its payments counted and
    added up, and the gas and fee the attempts ledger recorded for it."""
    payments = payment_list(user=user).exclude(transaction_hash="")
    if transaction_hash is not None:
        payments = payments.filter(transaction_hash=transaction_hash)
    rows = list(
        payments.order_by()
        .values("transaction_hash", "network")
        .annotate(
            payments=Count("pk"),
            amount=Sum("amount"),
            decimals=Max("token_decimals"),
            block=Max("block_number"),
            first_sent=Min("submitted_at"),
            last_completed=Max("completed_at"),
            latest=Max("updated_at"),
        )
        .order_by("-latest")[:limit]
    )
    settlements = {
        row["transaction_hash"]: Settlement(
            transaction_hash=row["transaction_hash"],
            network=row["network"],
            payments=row["payments"],
            amount=row["amount"] or Decimal(0),
            decimals=row["decimals"],
            block_number=row["block"],
            first_sent_at=row["first_sent"],
            last_completed_at=row["last_completed"],
        )
        for row in rows
    }
    for row in (
        payments.filter(transaction_hash__in=list(settlements))
        .order_by()
        .values("transaction_hash", "status")
        .annotate(total=Count("pk"))
    ):
        settlements[row["transaction_hash"]].statuses[row["status"]] = row["total"]
    ledger = (
        JobAttempt.objects.filter(
            job__payment__transaction_hash__in=list(settlements), fee_wei__isnull=False
        )
        .values_list("job__payment__transaction_hash", "gas_used", "fee_wei")
        .order_by("finished_at")
    )
    for hash_value, gas_used, fee_wei in ledger:
        # Every job of a batch records the one transaction's gas and fee: take it once.
        settlements[hash_value].gas_used = gas_used
        settlements[hash_value].fee_wei = fee_wei
    return list(settlements.values())


def list_view(request: HttpRequest, *, admin_site: AdminSite) -> HttpResponse:
    context = {
        **admin_site.each_context(request),
        "title": "Settlement transactions",
        "settlements": settlement_list(user=request.user),
        "shown": TRANSACTIONS_SHOWN,
        "pages": console_pages(),
    }
    return TemplateResponse(request, "admin/autopay/settlements.html", context)


def detail_view(
    request: HttpRequest, *, admin_site: AdminSite, transaction_hash: str
) -> HttpResponse:
    found = settlement_list(user=request.user, transaction_hash=transaction_hash, limit=1)
    if not found:
        raise Http404("No payment was settled in this transaction.")
    payments = [
        {
            "payment": payment,
            "amount": money_text(
                payment.amount, decimals=payment.token_decimals, network=payment.network
            ),
            "badge": status_badge(payment.status, payment.get_status_display()),
        }
        for payment in payment_list(user=request.user)
        .filter(transaction_hash=transaction_hash)
        .order_by("pk")
    ]
    context = {
        **admin_site.each_context(request),
        "title": "Settlement transaction",
        "settlement": found[0],
        "payments": payments,
        "pages": console_pages(),
    }
    return TemplateResponse(request, "admin/autopay/settlement.html", context)
