"""Settling scheduled payment jobs in batches: many payments, one transaction.

The throughput path of the engine. The scan publishes batches of job ids
(``jobs.queue.publish_scheduled_jobs``); ``settle_jobs`` takes a batch up to its broadcast:

    claim every job in one statement -> validate (10 %) -> sign every authorization in bulk
    and check it locally (30 %) -> simulate the whole batch once (an aggregate3 eth_call)
    -> write the transaction hash to every payment (50 %) -> broadcast one transaction

and ``confirm_jobs`` (a message of its own, so that no worker sits idle while a block is mined
and several batches are in flight per relayer) records what the receipt says: AuthorizationUsed
events name the settled payments (80 %, 100 %, in bulk).

Every promise of the single path (autopay.engine) holds for each item of a batch:
- the claim is conditional: a job is in at most one batch, whatever duplicate or overlapping
  batch messages the queue delivers, and only the lease holder moves it on;
- the authorization's nonce is derived from the payment, so the chain refuses a second
  settlement of a period whatever happens around it;
- the transaction hash is written to all the batch's payments before the broadcast, so that
  after a crash at any point recovery and reconcile find it (the single path then finishes
  each job, and the chain says whether it was paid);
- an item the simulation says would fail is classified as the single path classifies it and
  never sent; an item missing from the receipt goes back to its job as a transient failure,
  and its next attempt (alone) asks the chain first.
Items leave a batch through the single path's own ending (``engine.attempt_ended``), so a
failed, delayed or reconciled job of a batch is recorded exactly as one settled alone.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Case, CharField, F, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from autopay import engine
from autopay.chain import client as chain
from autopay.chain.relayer import get_relayer
from autopay.rails.base import PaymentIntent, Progress, Settlement
from autopay.rails.x402_batch import SignedAuthorization, X402BatchRail
from autopay.signers import DigestToSign, sign_digests
from core.sql import binary_cursor
from jobs import services as job_services
from jobs.bulk import chunks, jobs_claim, jobs_complete, jobs_held, jobs_progress
from jobs.models import Job
from jobs.queue import publish_jobs
from jobs.services import AttemptReport
from subscriptions import errors
from subscriptions.models import Payment, Subscription
from subscriptions.services import payments_record_success
from subscriptions.validators import network_tokens

logger = logging.getLogger(__name__)


# What a batch reads of its payments and their subscriptions (every other column is left in
# the database: a batch reads hundreds of rows).
_PAYMENT_FIELDS = (
    "id",
    "subscription_id",
    "period_index",
    "period_start",
    "amount",
    "payer_address",
    "wallet_id",
    "recipient_address",
    "token_address",
    "token_decimals",
    "network",
    "status",
    "authorization_nonce",
    "transaction_hash",
    "search_from_block",
    "block_number",
)
_SUBSCRIPTION_FIELDS = (
    "subscription__owner_id",
    "subscription__status",
    "subscription__auto_pay_enabled",
)


@dataclass(frozen=True)
class SentBatch:
    """A batch transaction on its way: what its confirmation needs."""

    transaction_hash: str
    job_ids: list[str]
    # The lease the jobs are held under (the settling task's worker identity).
    lease_owner: str
    # Unix time after which a transaction still not mined counts as pending (the jobs then
    # retry alone, and their next attempt asks the chain first).
    deadline: float


@dataclass
class BatchReport:
    """What happened to a batch message (counts), and the single messages to publish."""

    claimed: int = 0
    sent: int = 0
    transactions: int = 0
    completed: int = 0
    failed: int = 0
    delayed: int = 0
    lease_lost: int = 0
    # Seconds to wait -> ids of the jobs to retry alone after that.
    retries: dict[float, list[str]] = field(default_factory=dict)
    # Set by a confirmation still waiting for its transaction: look again after this long.
    retry_in: float | None = None
    # Seconds spent in each step (claim, validate, sign, simulate, send, receipt, record).
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timing(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[step] = round(self.seconds.get(step, 0.0) + elapsed, 4)

    def add(self, job_id: str, outcome: engine.Outcome) -> None:
        if outcome.status == "completed":
            self.completed += 1
        elif outcome.status == "failed":
            self.failed += 1
        elif outcome.status == "lease_lost":
            self.lease_lost += 1
        else:
            self.delayed += 1
        if outcome.retry_in is not None:
            self.retries.setdefault(outcome.retry_in, []).append(job_id)

    def as_dict(self) -> dict[str, Any]:
        summary = asdict(self)
        summary["retries"] = sum(len(ids) for ids in self.retries.values())
        return summary


@dataclass
class _Item:
    """One job of a batch, held under ``lease_owner``, and its payment."""

    job_id: str
    attempts_made: int
    max_attempts: int
    lease_owner: str
    payment: Payment
    intent: PaymentIntent
    signed: SignedAuthorization | None = None

    @property
    def job(self) -> Job:
        """The job as the single path's endings take it (built only when one is needed)."""
        return Job(
            id=uuid.UUID(self.job_id),
            payment_id=self.payment.pk,
            status=Job.Status.ACTIVE,
            lease_owner=self.lease_owner,
            attempts_made=self.attempts_made,
            max_attempts=self.max_attempts,
        )


def settle_jobs(
    *, job_ids: Sequence[str], worker_id: str, on_sent: Callable[[SentBatch], None]
) -> BatchReport:
    """Settle a batch of payment jobs up to the broadcast of its transaction(s); ``on_sent``
    is called with each transaction once it is out (the task queues its confirmation).
    Safe to call any number of times with any overlap of job ids."""
    close_old_connections()
    rail = X402BatchRail.from_settings(network_tokens=network_tokens())
    if rail is None:
        # Payments go through a remote facilitator or no rail at all: no batch transaction.
        return _one_by_one(job_ids, worker_id)
    # A batch transaction pays custodial subscriptions on the default chain; pre-signed ones,
    # those paid through a service's x402 endpoint and other networks take the single path.
    alone = _single_path_jobs(job_ids)
    report = _one_by_one(alone, worker_id) if alone else BatchReport()
    job_ids = [job_id for job_id in job_ids if str(job_id) not in alone]
    with report.timing("claim"):
        claimed = jobs_claim(job_ids=job_ids, worker_id=worker_id)
    report.claimed = len(claimed)
    if not claimed:
        logger.info("batch of %d job(s): none claimable (duplicate or early)", len(job_ids))
        return report
    with report.timing("claim"):
        payments = (
            Payment.objects.select_related("subscription")
            .only(*_PAYMENT_FIELDS, *_SUBSCRIPTION_FIELDS)
            .in_bulk([job.payment_id for job in claimed])
        )
    items = [
        _Item(
            job_id=job.id,
            attempts_made=job.attempts_made,
            max_attempts=job.max_attempts,
            lease_owner=worker_id,
            payment=payments[job.payment_id],
            intent=engine.payment_intent(payments[job.payment_id]),
        )
        for job in claimed
    ]
    _BatchSettlement(rail, worker_id, report, on_sent).run(items)
    _publish_retries(report)
    logger.info("batch: %s", report.as_dict())
    return report


def confirm_jobs(
    *, transaction_hash: str, job_ids: Sequence[str], lease_owner: str, deadline: float
) -> BatchReport:
    """Record a batch transaction's outcome for each of its jobs still held under
    ``lease_owner``; ``retry_in`` is set while the transaction is not yet mined."""
    close_old_connections()
    report = BatchReport()
    # The payments of the jobs still held, each with its job's id and attempts (one model per
    # row: a confirmation reads hundreds).
    items = [
        _Item(
            job_id=str(payment.held_job_id),
            attempts_made=payment.held_attempts,
            max_attempts=payment.held_max_attempts,
            lease_owner=lease_owner,
            payment=payment,
            intent=engine.payment_intent(payment),
        )
        for payment in Payment.objects.only(*_PAYMENT_FIELDS)
        .filter(
            jobs__pk__in=list(job_ids),
            jobs__status=Job.Status.ACTIVE,
            jobs__lease_owner=lease_owner,
        )
        .annotate(
            held_job_id=F("jobs__id"),
            held_attempts=F("jobs__attempts_made"),
            held_max_attempts=F("jobs__max_attempts"),
        )
    ]
    if not items:
        return report  # recorded already, or taken back by recovery (which reconciles)
    report.claimed = len(items)
    rail = X402BatchRail.from_settings(network_tokens=network_tokens())
    outcomes: Sequence[Settlement | errors.PaymentError] | None
    try:
        with report.timing("receipt"):
            outcomes = (
                rail.outcomes(transaction_hash, [item.intent for item in items]) if rail else None
            )
    except errors.PaymentError as error:
        if time.time() < deadline:
            report.retry_in = settings.AUTOPAY_BATCH_CONFIRM_POLL_SECONDS
            return report
        outcomes = [error] * len(items)
    if outcomes is None:
        if rail is not None and time.time() < deadline:
            report.retry_in = settings.AUTOPAY_BATCH_CONFIRM_POLL_SECONDS
            return report
        pending = errors.SettlementPending(
            f"transaction {transaction_hash} not confirmed within "
            f"{settings.CHAIN_CONFIRMATION_TIMEOUT_SECONDS:.0f}s"
        )
        outcomes = [pending] * len(items)

    settled = [
        (item, outcome)
        for item, outcome in zip(items, outcomes, strict=True)
        if isinstance(outcome, Settlement)
    ]
    if settled:
        with report.timing("record"):
            _record_settled(settled, transaction_hash, lease_owner, report)
    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, errors.PaymentError):
            _end(
                report,
                item.job_id,
                partial(_ending, item.job, item.payment, lease_owner, outcome),
            )
    _publish_retries(report)
    logger.info("batch %s confirmed: %s", transaction_hash, report.as_dict())
    return report


def _record_settled(
    settled: list[tuple[_Item, Settlement]],
    transaction_hash: str,
    lease_owner: str,
    report: BatchReport,
) -> None:
    """The money moved: payments first (whatever happens to the jobs), then 80 % and 100 %."""
    block = settled[0][1].block_number
    payments_record_success(
        payments=[item.payment for item, _ in settled],
        transaction_hash=transaction_hash,
        block_number=block,
    )
    ids = [item.job_id for item, _ in settled]
    # No lease to extend: the 50 % step just did, and completion comes next.
    held = jobs_progress(
        job_ids=ids, worker_id=lease_owner, progress=Progress.CONFIRMED, extend_lease=False
    )
    first = settled[0][1]
    fee = (
        first.gas_used * first.effective_gas_price
        if first.gas_used is not None and first.effective_gas_price is not None
        else None
    )
    completed = jobs_complete(
        results={
            item.job_id: engine.settlement_result(item.payment, settlement)
            for item, settlement in settled
            if item.job_id in held
        },
        worker_id=lease_owner,
        report=AttemptReport(
            transaction_hashes=(transaction_hash,), gas_used=first.gas_used, fee_wei=fee
        ),
    )
    report.completed += len(completed)
    report.lease_lost += len(ids) - len(completed)


class _BatchSettlement:
    """One batch message's items from claim to broadcast."""

    def __init__(
        self,
        rail: X402BatchRail,
        worker_id: str,
        report: BatchReport,
        on_sent: Callable[[SentBatch], None],
    ) -> None:
        self.rail = rail
        self.worker_id = worker_id
        self.report = report
        self.on_sent = on_sent
        self.ended: set[str] = set()

    def run(self, items: list[_Item]) -> None:
        try:
            with self.report.timing("validate"):
                items = self._validate(items)
                items = self._reconcile_earlier_broadcasts(items)
                if items:
                    self.rail.check_contracts([item.payment.token_address for item in items])
            if items:
                with self.report.timing("sign"):
                    items = self._sign(items)
            if items:
                per_transaction = self.rail.max_items_per_transaction(_block_gas_limit())
                for chunk in chunks(items, per_transaction):
                    self._settle(chunk)
        except errors.PaymentError as error:
            # The whole batch meets it (the chain unreachable, the configuration wrong).
            self._end_all(items, error)
        except SoftTimeLimitExceeded:
            self._end_all(items, errors.AttemptTimeout("the batch ran past its soft time limit"))
        except Exception as exc:
            logger.exception("batch: unexpected error")
            self._end_all_unexpected(items, exc)

    # --- the items' endings ---------------------------------------------------------------

    def _classify(self, item: _Item, outcome: Settlement | errors.PaymentError) -> None:
        _end(
            self.report,
            item.job_id,
            partial(_ending, item.job, item.payment, self.worker_id, outcome),
        )
        self.ended.add(item.job_id)

    def _end_all(self, items: list[_Item], error: errors.PaymentError) -> None:
        for item in items:
            if item.job_id not in self.ended:
                self._classify(item, error)

    def _end_all_unexpected(self, items: list[_Item], exc: Exception) -> None:
        """A bug: as the single path does, a payment that may have been broadcast keeps its
        hash for reconcile (only the job fails); the others fail with internal_error."""
        internal = errors.InternalError(f"internal error: {type(exc).__name__}")
        for item in items:
            if item.job_id in self.ended:
                continue
            item.payment.refresh_from_db()
            if item.payment.status == Payment.Status.SUBMITTED:
                job_services.job_fail(
                    job=item.job,
                    worker_id=self.worker_id,
                    code=internal.code,
                    message=internal.message,
                )
                self.report.failed += 1
                self.ended.add(item.job_id)
            else:
                self._classify(item, internal)

    def _keep_held(self, items: list[_Item], held: set[str]) -> list[_Item]:
        kept = [item for item in items if item.job_id in held]
        lost = len(items) - len(kept)
        if lost:
            logger.warning("batch: %d job(s) taken back by recovery; this worker drops them", lost)
            self.report.lease_lost += lost
            self.ended.update(item.job_id for item in items if item.job_id not in held)
        return kept

    # --- steps ----------------------------------------------------------------------------

    def _validate(self, items: list[_Item]) -> list[_Item]:
        """Paid payments complete their job; subscriptions that may not be charged fail it."""
        chargeable = []
        for item in items:
            payment, subscription = item.payment, item.payment.subscription
            if payment.status == Payment.Status.COMPLETED:
                settlement = Settlement(
                    payment.transaction_hash, payment.block_number, reconciled=True
                )
                self._classify(item, settlement)
            elif not subscription.is_chargeable:
                self._classify(
                    item,
                    errors.SubscriptionNotActive(
                        f"subscription is {subscription.status}"
                        + ("" if subscription.auto_pay_enabled else " with auto-pay off")
                    ),
                )
            else:
                chargeable.append(item)
        held = jobs_progress(
            job_ids=[item.job_id for item in chargeable],
            worker_id=self.worker_id,
            progress=Progress.VALIDATED,
            extend_lease=False,  # claimed a moment ago
        )
        return self._keep_held(chargeable, held)

    def _reconcile_earlier_broadcasts(self, items: list[_Item]) -> list[_Item]:
        """A payment an earlier attempt broadcast may be paid, or still pending: the chain
        decides (as the single path asks before every attempt) before it joins a batch."""
        remaining = []
        for item in items:
            if not item.payment.transaction_hash:
                remaining.append(item)
                continue
            try:
                settlement = self.rail.reconcile(item.intent)
            except errors.PaymentError as error:
                self._classify(item, error)
                continue
            if settlement is not None:
                self._classify(item, settlement)
            else:
                remaining.append(item)
        return remaining

    def _sign(self, items: list[_Item]) -> list[_Item]:
        """Record the authorizations (nonce, window, search block), sign them all, check each
        signature and rule locally, then report 30 %."""
        now = int(time.time())
        authorizations = {
            item.job_id: self.rail.authorization(item.intent, now=now) for item in items
        }
        window = next(iter(authorizations.values()))
        items = self._prepared(
            items,
            valid_after=window.valid_after,
            valid_before=window.valid_before,
            search_from_block=chain.recent_block_number(),
        )
        digests = {item.job_id: self.rail.digest(authorizations[item.job_id]) for item in items}
        signatures = sign_digests(
            [
                DigestToSign(
                    wallet_id=item.payment.wallet_id,
                    owner_id=item.payment.subscription.owner_id,
                    payer_address=item.payment.payer_address,
                    digest=digests[item.job_id],
                )
                for item in items
            ]
        )
        signed = []
        for item, signature in zip(items, signatures, strict=True):
            if isinstance(signature, errors.PaymentError):
                self._classify(item, signature)
                continue
            item.signed = SignedAuthorization(
                item.intent, authorizations[item.job_id], digests[item.job_id], signature
            )
            problem = self.rail.verify(item.signed, now=now)
            if problem is not None:
                self._classify(item, problem)
                continue
            signed.append(item)
        held = jobs_progress(
            job_ids=[item.job_id for item in signed],
            worker_id=self.worker_id,
            progress=Progress.SIGNED,
            extend_lease=False,  # claimed a moment ago
        )
        return self._keep_held(signed, held)

    def _prepared(
        self, items: list[_Item], *, valid_after: int, valid_before: int, search_from_block: int
    ) -> list[_Item]:
        """``_Hooks.prepared`` for the batch, in one statement: processing, the nonce, the
        window and where a search for the settlement may start; only while this worker holds
        each job."""
        now = timezone.now()
        if connection.vendor == "postgresql":
            updated = _prepared_postgresql(
                {item.payment.pk: item.intent.nonce for item in items},
                worker_id=self.worker_id,
                valid_after=valid_after,
                valid_before=valid_before,
                search_from_block=search_from_block,
                now=now,
            )
        else:
            updated = (
                self._payments_held(items)
                .exclude(status=Payment.Status.COMPLETED)
                .update(
                    status=Payment.Status.PROCESSING,
                    authorization_nonce=Case(
                        *[
                            When(pk=item.payment.pk, then=Value(item.intent.nonce))
                            for item in items
                        ],
                        output_field=CharField(),
                    ),
                    valid_after=valid_after,
                    valid_before=valid_before,
                    search_from_block=Coalesce(F("search_from_block"), Value(search_from_block)),
                    updated_at=now,
                )
            )
        if updated == len(items):
            return items
        held = jobs_held(job_ids=[item.job_id for item in items], worker_id=self.worker_id)
        return self._keep_held(items, held)

    def _payments_held(self, items: Sequence[_Item]) -> Any:
        return Payment.objects.filter(
            pk__in=[item.payment.pk for item in items],
            jobs__status=Job.Status.ACTIVE,
            jobs__lease_owner=self.worker_id,
        )

    def _settle(self, items: list[_Item]) -> None:
        """Simulate one transaction's items, then send those that will settle."""
        relayer = get_relayer()
        signed = [item.signed for item in items if item.signed is not None]
        try:
            with self.report.timing("simulate"):
                transaction = self.rail.transaction(signed)
                outcomes = self.rail.simulate(transaction, sender=relayer.address)
        except errors.PaymentError as error:
            self._end_all(items, error)
            return
        except ValueError as exc:
            self._end_all(items, errors.BatchItemFailed(f"the batch simulation failed: {exc}"))
            return
        to_send = []
        for item, outcome in zip(items, outcomes, strict=True):
            if outcome is None:
                to_send.append(item)
            else:
                self._classify(item, outcome)
        if not to_send:
            return
        if len(to_send) < len(items):
            transaction = self.rail.transaction(
                [item.signed for item in to_send if item.signed is not None]
            )
        try:
            with self.report.timing("send"):
                tx_hash = self.rail.send(
                    transaction,
                    relayer=relayer,
                    on_signed=lambda tx_hash: self._submitted(to_send, tx_hash),
                    on_unsent=lambda tx_hash: self._unsent(to_send, tx_hash),
                )
        except job_services.LeaseLost:
            held = jobs_held(job_ids=[item.job_id for item in to_send], worker_id=self.worker_id)
            kept = self._keep_held(to_send, held)
            self._end_all(
                kept,
                errors.BatchItemFailed("a job of the batch was taken back before the broadcast"),
            )
            return
        except errors.PaymentError as error:
            # Nothing sent, or maybe sent (a transport error on the broadcast): the hash stays
            # recorded then, and each job's next attempt reconciles by it before paying.
            self._end_all(to_send, error)
            return
        self.ended.update(item.job_id for item in to_send)
        self.report.sent += len(to_send)
        self.report.transactions += 1
        sent = SentBatch(
            transaction_hash=tx_hash,
            job_ids=[item.job_id for item in to_send],
            lease_owner=self.worker_id,
            deadline=time.time() + settings.CHAIN_CONFIRMATION_TIMEOUT_SECONDS,
        )
        try:
            self.on_sent(sent)
        except Exception:
            # The jobs stay active under their lease; when it expires, recovery hands each
            # to the single path, which finds the transaction by hash and nonce.
            logger.exception("batch %s: queueing its confirmation failed", tx_hash)

    def _submitted(self, items: list[_Item], tx_hash: str) -> None:
        """Before the broadcast: 50 % and the hash on every payment, or nothing is sent."""
        job_ids = [item.job_id for item in items]
        now = timezone.now()
        if connection.vendor == "postgresql":
            held, updated = _submitted_postgresql(
                job_ids, worker_id=self.worker_id, tx_hash=tx_hash, now=now
            )
        else:
            held = len(
                jobs_progress(
                    job_ids=job_ids, worker_id=self.worker_id, progress=Progress.SUBMITTED
                )
            )
            updated = (
                self._payments_held(items)
                .exclude(status=Payment.Status.COMPLETED)
                .update(
                    status=Payment.Status.SUBMITTED,
                    transaction_hash=tx_hash,
                    submitted_at=now,
                    updated_at=now,
                )
                if held == len(items)
                else 0
            )
        if held != len(items) or updated != len(items):
            self._unsent(items, tx_hash)
            raise job_services.LeaseLost("a job of the batch was taken back")

    def _unsent(self, items: list[_Item], tx_hash: str) -> None:
        Payment.objects.filter(
            pk__in=[item.payment.pk for item in items], transaction_hash=tx_hash
        ).update(status=Payment.Status.PROCESSING, transaction_hash="", updated_at=timezone.now())


# Binary parameters (%b, binary_cursor): arrays of hundreds of values are not formatted as text.
_PREPARED_POSTGRESQL = """
UPDATE {payment} AS payment SET status = %b, authorization_nonce = wanted.nonce,
    valid_after = %b, valid_before = %b,
    search_from_block = COALESCE(payment.search_from_block, %b), updated_at = %b
FROM unnest(%b::bigint[], %b::text[]) AS wanted(id, nonce), {job} AS job
WHERE payment.id = wanted.id AND payment.status <> %b
  AND job.payment_id = payment.id AND job.status = %b AND job.lease_owner = %b
"""


def _prepared_postgresql(
    nonces: dict[int, str],
    *,
    worker_id: str,
    valid_after: int,
    valid_before: int,
    search_from_block: int,
    now: Any,
) -> int:
    """The batch's ``prepared`` write in one statement, each payment with its own nonce."""
    sql = _PREPARED_POSTGRESQL.format(payment=Payment._meta.db_table, job=Job._meta.db_table)
    with binary_cursor() as cursor:
        cursor.execute(
            sql,
            [
                Payment.Status.PROCESSING,
                valid_after,
                valid_before,
                search_from_block,
                now,
                list(nonces),
                list(nonces.values()),
                Payment.Status.COMPLETED,
                Job.Status.ACTIVE,
                worker_id,
            ],
        )
        return int(cursor.rowcount)


_SUBMITTED_POSTGRESQL = """
WITH held AS (
    UPDATE {job} SET progress = %b, lease_expires_at = %b, updated_at = %b
    WHERE id = ANY(%b::uuid[]) AND status = %b AND lease_owner = %b
    RETURNING payment_id
), submitted AS (
    UPDATE {payment} AS payment
    SET status = %b, transaction_hash = %b, submitted_at = %b, updated_at = %b
    FROM held WHERE payment.id = held.payment_id AND payment.status <> %b
    RETURNING payment.id
)
SELECT (SELECT count(*) FROM held), (SELECT count(*) FROM submitted)
"""


def _submitted_postgresql(
    job_ids: list[str], *, worker_id: str, tx_hash: str, now: Any
) -> tuple[int, int]:
    """50 % on the jobs this worker holds and the hash on their payments, in one statement;
    returns how many jobs were held and how many payments took the hash."""
    sql = _SUBMITTED_POSTGRESQL.format(job=Job._meta.db_table, payment=Payment._meta.db_table)
    lease = now + timedelta(seconds=settings.AUTOPAY_JOB_LEASE_SECONDS)
    with binary_cursor() as cursor:
        cursor.execute(
            sql,
            [
                int(Progress.SUBMITTED),
                lease,
                now,
                [uuid.UUID(job_id) for job_id in job_ids],
                Job.Status.ACTIVE,
                worker_id,
                Payment.Status.SUBMITTED,
                tx_hash,
                now,
                now,
                Payment.Status.COMPLETED,
            ],
        )
        held, submitted = cursor.fetchone()
    return int(held), int(submitted)


def _ending(
    job: Job, payment: Payment, worker_id: str, outcome: Settlement | errors.PaymentError
) -> engine.Outcome:
    """The single path's ending for one item of a batch (its attempt in the ledger too)."""
    return engine.attempt_ended(job, payment, worker_id, outcome)


def _end(report: BatchReport, job_id: str, ending: Callable[[], engine.Outcome]) -> None:
    try:
        outcome = ending()
    except job_services.LeaseLost:
        outcome = engine.Outcome("lease_lost")
    report.add(job_id, outcome)


def _publish_retries(report: BatchReport) -> None:
    """Jobs delayed by a transient error retry alone after their backoff."""
    for countdown, job_ids in report.retries.items():
        try:
            publish_jobs(job_ids, countdown=countdown)
        except Exception:
            logger.exception("publishing %d retry message(s) failed; recovery will", len(job_ids))


def _single_path_jobs(job_ids: Sequence[str]) -> list[str]:
    """The jobs of a batch message that a batch transaction does not pay."""
    return [
        str(job_id)
        for job_id in Job.objects.filter(pk__in=list(job_ids))
        .exclude(
            subscription__mode=Subscription.Mode.CUSTODIAL,
            subscription__resource_url="",
            payment__network=settings.CHAIN_NETWORK,
        )
        .values_list("pk", flat=True)
    ]


def _one_by_one(job_ids: Sequence[str], worker_id: str) -> BatchReport:
    """Without our own relayers (a remote facilitator, or no rail) a batch is its jobs, each
    processed as a single message would be."""
    report = BatchReport()
    for job_id in dict.fromkeys(str(job_id) for job_id in job_ids):
        outcome = engine.process_job(job_id=job_id, worker_id=worker_id)
        if outcome.status != "skipped":
            report.claimed += 1
            report.add(job_id, outcome)
    _publish_retries(report)
    return report


_gas_limit_cache: dict[str, tuple[float, int]] = {}


def _block_gas_limit() -> int:
    """The chain's block gas limit, asked once a minute."""
    url = settings.CHAIN_RPC_URL
    cached = _gas_limit_cache.get(url)
    now = time.monotonic()
    if cached is None or now - cached[0] > 60:
        w3 = chain.get_web3()
        block = chain.call_rpc(w3.eth.get_block, "latest")
        cached = (now, int(block["gasLimit"]))
        _gas_limit_cache[url] = cached
    return cached[1]
