"""Subscriptions and the payments that settle their billing periods."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from subscriptions import periods


class PayerWallet(models.Model):
    """A payer wallet whose key the server holds (encrypted) to sign its owner's payments."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payer_wallets"
    )
    label = models.CharField(max_length=100, blank=True, default="")
    address = models.CharField(max_length=42, unique=True)
    # Fernet token of the 32-byte private key; never leaves the engine in clear.
    encrypted_private_key = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")
        # The table it had when the engine app held wallets: moved without copying keys.
        db_table = "autopay_payerwallet"

    def __str__(self) -> str:
        return f"{self.label or 'wallet'} {self.address}"

    def __repr__(self) -> str:
        # Never include the key material, even encrypted, in a repr that may reach a log.
        return f"<PayerWallet {self.pk} {self.address}>"


class Subscription(models.Model):
    class Mode(models.TextChoices):
        # A server-held wallet of the owner signs each period (PayerWallet).
        CUSTODIAL = "custodial", "Custodial (server-held wallet)"
        # The payer signs each period's authorization in advance; the server holds no key.
        PRESIGNED = "presigned", "Pre-signed (payer signs ahead, no key held)"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAST_DUE = "past_due", "Past due (payment failed, retrying)"
        UNPAID = "unpaid", "Unpaid (retries exhausted, auto-pay stopped)"
        PAUSED = "paused", "Paused"
        CANCELED = "canceled", "Canceled"

    class IntervalUnit(models.TextChoices):
        MINUTE = "minute", "Minute"
        HOUR = "hour", "Hour"
        DAY = "day", "Day"
        WEEK = "week", "Week"
        MONTH = "month", "Month"
        YEAR = "year", "Year"

    # Statuses in which auto-pay charges (see is_chargeable).
    CHARGEABLE_STATUSES = (Status.ACTIVE, Status.PAST_DUE)

    # Indexed by sub_owner_idx (owner, -created_at).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="subscriptions",
        db_index=False,
    )
    service_name = models.CharField(max_length=200)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.CUSTODIAL)
    payer_address = models.CharField(max_length=42)
    recipient_address = models.CharField(max_length=42)
    wallet = models.ForeignKey(
        PayerWallet,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="subscriptions",
        help_text="Server-held payer wallet that signs this subscription's authorizations.",
    )
    amount = models.DecimalField(
        max_digits=36, decimal_places=18, validators=[MinValueValidator(Decimal("0"))]
    )
    token_address = models.CharField(max_length=42)
    token_decimals = models.PositiveSmallIntegerField(default=6)
    network = models.CharField(max_length=64, help_text="CAIP-2 chain id, e.g. eip155:8453")
    # x402 HTTP: when set, each period is paid through this paid endpoint of the service
    # (402 -> signed payment header -> the service's facilitator settles) instead of settling
    # the authorization ourselves.
    resource_url = models.URLField(max_length=500, blank=True, default="")
    resource_method = models.CharField(
        max_length=8, choices=[("GET", "GET"), ("POST", "POST")], default="GET"
    )
    interval_unit = models.CharField(
        max_length=8, choices=IntervalUnit.choices, default=IntervalUnit.MONTH
    )
    interval_count = models.PositiveIntegerField(default=1)
    billing_anchor = models.DateTimeField(help_text="Start of the first billing period.")
    # Start of the earliest period not yet paid: what the subscriber sees as "next payment due".
    next_payment_due_at = models.DateTimeField()
    # Scheduling cursor: the first period that has no Payment row yet (the scan's key).
    next_period_index = models.PositiveIntegerField(default=0)
    next_period_due_at = models.DateTimeField()
    auto_pay_enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Why the engine (not the owner) stopped this subscription, e.g. a payer wallet that is
    # not the owner's; shown in the API and the admin. Empty when nothing is wrong.
    status_reason = models.CharField(max_length=300, blank=True, default="")
    # Subscription-level retries (dunning) after a payment's job has failed.
    dunning_attempts = models.PositiveSmallIntegerField(default=0)
    dunning_next_retry_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            # The scheduler's due query: active auto-pay subscriptions ordered by due time.
            models.Index(
                fields=["next_period_due_at", "id"],
                name="sub_due_scan_idx",
                condition=Q(status="active", auto_pay_enabled=True),
            ),
            models.Index(
                fields=["dunning_next_retry_at", "id"],
                name="sub_dunning_idx",
                condition=Q(status="past_due", auto_pay_enabled=True),
            ),
            models.Index(fields=["owner", "-created_at"], name="sub_owner_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="sub_amount_positive"),
            models.CheckConstraint(
                condition=Q(interval_count__gte=1), name="sub_interval_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.service_name} #{self.pk} ({self.status})"

    def period_start(self, index: int) -> datetime:
        return periods.period_start(
            anchor=self.billing_anchor,
            unit=self.interval_unit,
            count=self.interval_count,
            index=index,
        )

    @property
    def amount_atomic(self) -> int:
        return to_atomic(self.amount, self.token_decimals)

    @property
    def is_presigned(self) -> bool:
        return self.mode == self.Mode.PRESIGNED

    @property
    def is_chargeable(self) -> bool:
        """Whether the engine may charge this subscription now (the one place that says)."""
        return self.auto_pay_enabled and self.status in self.CHARGEABLE_STATUSES

    @classmethod
    def chargeable(cls) -> Q:
        """``is_chargeable`` as a query condition on subscriptions."""
        return Q(auto_pay_enabled=True, status__in=cls.CHARGEABLE_STATUSES)


def token_amount_text(amount: Decimal, decimals: int) -> str:
    """An amount as the token counts it: exactly ``decimals`` places (12.500000 for USDC),
    not the 18 places the column stores."""
    return format(amount.quantize(Decimal(1).scaleb(-decimals)), "f")


def to_atomic(amount: Decimal, decimals: int) -> int:
    """Exact conversion of a decimal token amount to integer atomic units."""
    scaled = amount.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than {decimals} decimal places")
    return int(scaled)


class Payment(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        SUBMITTED = "submitted", "Submitted on-chain"
        # Broadcast, and the chain has not answered (RPC down, still pending): never failed
        # while money may move; the job (or the reconcile sweep) asks the chain again.
        SETTLEMENT_PENDING = "settlement_pending", "Settlement pending (waiting for the chain)"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        # Owed while the engine was down, older than AUTOPAY_MAX_MISSED_PERIODS: never charged.
        WAIVED = "waived", "Waived (missed while the engine was down; never charged)"

    # Indexed by the unique (subscription, period_start) constraint; no separate FK index.
    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, related_name="payments", db_index=False
    )
    period_index = models.PositiveIntegerField()
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    amount = models.DecimalField(max_digits=36, decimal_places=18)
    # Snapshot of who pays whom, taken when the payment is created.
    payer_address = models.CharField(max_length=42)
    # The server-held wallet that signs for payer_address, taken from the subscription when the
    # payment is created; the signer loads its key by this id and the subscription's owner.
    wallet = models.ForeignKey(
        PayerWallet,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="payments",
        db_index=False,
    )
    recipient_address = models.CharField(max_length=42)
    token_address = models.CharField(max_length=42)
    token_decimals = models.PositiveSmallIntegerField(default=6)
    network = models.CharField(max_length=64)
    # Indexed through payment_status_idx (status, updated_at).
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.PENDING)
    # EIP-3009 nonce derived from the payment's identity, so the chain refuses a second charge.
    authorization_nonce = models.CharField(max_length=66, blank=True, default="")
    valid_after = models.BigIntegerField(null=True, blank=True)
    valid_before = models.BigIntegerField(null=True, blank=True)
    transaction_hash = models.CharField(max_length=66, blank=True, default="")
    # A block at or before the first signing: where a search for the settlement starts.
    search_from_block = models.BigIntegerField(null=True, blank=True)
    block_number = models.BigIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    submitted_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # When its transaction was found CHAIN_FINALITY_BLOCKS deep (until then a completed
    # payment is re-verified: a reorg may take the transaction away).
    finalized_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-period_start", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start"], name="payment_one_per_period"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="payment_status_idx"),
            # The finality sweep: completed payments not yet final, by block.
            models.Index(
                fields=["block_number"],
                name="payment_unfinal_idx",
                condition=Q(status="completed", finalized_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"Payment #{self.pk} of subscription {self.subscription_id} ({self.status})"

    @property
    def amount_atomic(self) -> int:
        return to_atomic(self.amount, self.token_decimals)

    # A transaction for it may be on its way to the chain: it cannot be recorded failed
    # until the chain has answered for that transaction.
    IN_FLIGHT_ON_CHAIN = (Status.SUBMITTED, Status.SETTLEMENT_PENDING)

    @property
    def is_terminal(self) -> bool:
        return self.status in (self.Status.COMPLETED, self.Status.FAILED, self.Status.WAIVED)

    @property
    def money_may_move(self) -> bool:
        """A settlement was broadcast and the chain has not said what became of it."""
        return self.status in self.IN_FLIGHT_ON_CHAIN and bool(self.transaction_hash)


class PresignedAuthorization(models.Model):
    """A payer's EIP-3009 TransferWithAuthorization for one billing period of a pre-signed
    subscription, signed in advance and verified before it was stored. The server holds no
    key: at the period's start the engine only submits this signature.

    One per period (a new upload replaces it; both carry the period's derived nonce, so the
    token contract accepts at most one of them).
    """

    # An authorization whose window ends sooner than this is not submitted (nor stored).
    MINIMUM_REMAINING_SECONDS = 60

    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="authorizations", db_index=False
    )
    period_index = models.PositiveIntegerField()
    period_start = models.DateTimeField()
    # The signed message, exactly as the payer signed it.
    payer_address = models.CharField(max_length=42)
    recipient_address = models.CharField(max_length=42)
    token_address = models.CharField(max_length=42)
    chain_id = models.BigIntegerField()
    value_atomic = models.DecimalField(max_digits=78, decimal_places=0)
    valid_after = models.BigIntegerField()
    valid_before = models.BigIntegerField()
    nonce = models.CharField(max_length=66)
    # 65-byte ECDSA signature, 0x-hex. Not a secret (it can only pay the recipient this
    # period's amount) but never shown by the API: the chain is where it is spent.
    signature = models.CharField(max_length=132)
    # Set when the engine found the nonce canceled on chain by the payer (cancelAuthorization).
    canceled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("subscription_id", "period_start")
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start"], name="presigned_one_per_period"
            ),
        ]

    def __str__(self) -> str:
        return f"Authorization of subscription {self.subscription_id}, period {self.period_index}"
