"""Processing one payment job: claim, validate, reconcile, pay, record.

The Celery task is a thin shell around ``process_job``; everything that decides what happens
to money lives here and in the rail, and every state change goes through the services.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from autopay.authorizations import period_nonce, subscription_intent
from autopay.rails import get_rail
from autopay.rails.authorization import TransferAuthorization
from autopay.rails.base import PaymentIntent, Progress, Settlement
from autopay.signers import payment_signer
from core.networks import NetworkConfig, network_config, use_network
from jobs import services as job_services
from jobs.heartbeat import lease_heartbeat
from jobs.models import Job, JobAttempt
from subscriptions import errors
from subscriptions import services as subscription_services
from subscriptions.models import Payment, Subscription

logger = logging.getLogger(__name__)


def worker_identity(task_id: str | None = None) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{task_id or '-'}"


@dataclass(frozen=True)
class Outcome:
    """What happened to a job message. ``retry_in``: the job is due again after this long (the
    dispatcher publishes it then)."""

    status: str
    retry_in: float | None = None


class _Hooks:
    """Callbacks the rail uses to report progress; they write through the services."""

    def __init__(self, job: Job, payment: Payment, worker_id: str) -> None:
        self.job = job
        self.payment = payment
        self.worker_id = worker_id
        # Whether this attempt sent /settle to a remote facilitator.
        self.settle_sent = False
        # Every transaction this attempt broadcast (or may have), for the attempts ledger.
        self.transaction_hashes: list[str] = []

    def report(self, settlement: Settlement | None = None) -> job_services.AttemptReport:
        """This attempt's row in the ledger: its transactions and, once settled, the fee."""
        hashes = list(self.transaction_hashes)
        fee_wei = None
        gas_used = None
        if settlement is not None:
            if settlement.transaction_hash and settlement.transaction_hash not in hashes:
                hashes.append(settlement.transaction_hash)
            gas_used = settlement.gas_used
            if settlement.gas_used is not None and settlement.effective_gas_price is not None:
                fee_wei = settlement.gas_used * settlement.effective_gas_price
        return job_services.AttemptReport(
            transaction_hashes=tuple(hashes), gas_used=gas_used, fee_wei=fee_wei
        )

    def progress(self, step: Progress) -> None:
        job_services.job_progress(job=self.job, worker_id=self.worker_id, progress=int(step))

    def sign(self, authorization: TransferAuthorization) -> str:
        """The payer's signature: the payment's wallet if it is the subscription owner's
        (custodial), or the payer's own uploaded signature (pre-signed)."""
        return payment_signer(self.payment).sign(authorization)

    def _payment_while_held(self) -> Any:
        """The payment row, writable only while this worker still holds the job's lease, so
        a worker that lost its job cannot overwrite what the new owner records."""
        return (
            Payment.objects.filter(pk=self.payment.pk)
            .exclude(status=Payment.Status.COMPLETED)
            .filter(
                jobs__pk=self.job.pk,
                jobs__status=Job.Status.ACTIVE,
                jobs__lease_owner=self.worker_id,
            )
        )

    def prepared(
        self, *, nonce: str, valid_after: int, valid_before: int, search_from_block: int | None
    ) -> None:
        now = timezone.now()
        updated = self._payment_while_held().update(
            status=Payment.Status.PROCESSING,
            authorization_nonce=nonce,
            valid_after=valid_after,
            valid_before=valid_before,
            search_from_block=Coalesce(F("search_from_block"), Value(search_from_block)),
            updated_at=now,
        )
        if not updated:
            raise job_services.LeaseLost(f"job {self.job.pk} or its payment moved on")
        self.payment.authorization_nonce = nonce

    def signed_transaction(self, tx_hash: str) -> None:
        """Called before the broadcast. Raising here (lease lost) means nothing is sent."""
        self.progress(Progress.SUBMITTED)
        now = timezone.now()
        # Recorded before the broadcast: a crash right after sending leaves a hash to look up.
        updated = self._payment_while_held().update(
            status=Payment.Status.SUBMITTED,
            transaction_hash=tx_hash,
            submitted_at=now,
            updated_at=now,
        )
        if not updated:
            raise job_services.LeaseLost(f"job {self.job.pk} or its payment moved on")
        self.payment.transaction_hash = tx_hash
        if tx_hash not in self.transaction_hashes:
            self.transaction_hashes.append(tx_hash)

    def unsent_transaction(self, tx_hash: str) -> None:
        Payment.objects.filter(pk=self.payment.pk, transaction_hash=tx_hash).update(
            status=Payment.Status.PROCESSING, transaction_hash="", updated_at=timezone.now()
        )
        self.payment.transaction_hash = ""
        if tx_hash in self.transaction_hashes:
            self.transaction_hashes.remove(tx_hash)

    def settle_requested(self) -> None:
        """Called before /settle is sent to a remote facilitator, which broadcasts itself: the
        payment is in flight from now, and the time bounds when another settle may start."""
        self.progress(Progress.SUBMITTED)
        now = timezone.now()
        updated = self._payment_while_held().update(
            status=Payment.Status.SUBMITTED, submitted_at=now, updated_at=now
        )
        if not updated:
            raise job_services.LeaseLost(f"job {self.job.pk} or its payment moved on")
        self.settle_sent = True

    def settle_refused(self) -> None:
        """The facilitator stated it did not settle (or never got the request)."""
        Payment.objects.filter(
            pk=self.payment.pk, status=Payment.Status.SUBMITTED, transaction_hash=""
        ).update(status=Payment.Status.PROCESSING, submitted_at=None, updated_at=timezone.now())


def payment_network(payment: Payment) -> NetworkConfig:
    """The configured network a payment is made on (AUTOPAY_NETWORKS)."""
    network = network_config(payment.network)
    if network is None:
        raise errors.UnsupportedNetwork(
            f"payment is on {payment.network}, which this deployment does not pay on "
            "(AUTOPAY_NETWORKS)"
        )
    return network


def payment_intent(payment: Payment) -> PaymentIntent:
    """What a rail needs of a payment, as plain data (with the nonce derived from it)."""
    return PaymentIntent(
        payment_id=payment.pk,
        subscription_id=payment.subscription_id,
        network=payment.network,
        token_address=payment.token_address,
        payer=payment.payer_address,
        recipient=payment.recipient_address,
        amount_atomic=payment.amount_atomic,
        nonce=payment.authorization_nonce
        or period_nonce(
            network=payment.network,
            subscription_id=payment.subscription_id,
            payer=payment.payer_address,
            token_address=payment.token_address,
            period_start=payment.period_start,
        ),
        search_from_block=payment.search_from_block,
        transaction_hash=payment.transaction_hash,
        submitted_at=payment.submitted_at.timestamp() if payment.submitted_at else None,
    )


def settlement_result(payment: Payment, settlement: Settlement) -> dict[str, Any]:
    """A completed job's result in the baseline's shape (plus payment and block)."""
    return {
        "success": True,
        "transactionHash": settlement.transaction_hash,
        "subscriptionId": str(payment.subscription_id),
        "amount": format(payment.amount.normalize(), "f"),
        "paymentId": str(payment.pk),
        "blockNumber": settlement.block_number,
        "reconciled": settlement.reconciled,
        **({"serviceReceipt": settlement.service_receipt} if settlement.service_receipt else {}),
    }


def _record_success(
    job: Job, payment: Payment, settlement: Settlement, worker_id: str, hooks: _Hooks
) -> Outcome:
    # The money moved: record the payment first (idempotent), whatever happens to the job.
    subscription_services.payment_record_success(
        payment=payment,
        transaction_hash=settlement.transaction_hash,
        block_number=settlement.block_number,
    )
    job_services.job_progress(job=job, worker_id=worker_id, progress=Progress.CONFIRMED)
    job_services.job_complete(
        job=job,
        worker_id=worker_id,
        result=settlement_result(payment, settlement),
        report=hooks.report(settlement),
    )
    logger.info(
        "job %s completed: payment %s settled in %s%s",
        job.pk,
        payment.pk,
        settlement.transaction_hash,
        " (reconciled)" if settlement.reconciled else "",
    )
    return Outcome("completed")


# Permanent errors that are the chain's own answer for a broadcast settlement (mined and
# reverted, or the authorization used by a cancel): the payment may be failed then.
_CHAIN_VERDICTS = frozenset(
    {
        errors.SettlementReverted.code,
        errors.AuthorizationCanceled.code,
        errors.InsufficientBalance.code,
    }
)


def _fail(
    job: Job, payment: Payment, worker_id: str, error: errors.PaymentError, hooks: _Hooks
) -> Outcome:
    """Fail the job and its payment in one transaction: nobody ever reads a failed job whose
    payment is still in flight. Only the lease holder may fail the job, and only then is the
    payment marked failed. A payment whose transaction was broadcast is never failed for a
    reason that is not the chain's answer for it: it is settlement_pending instead, and the
    reconcile sweep asks the chain (money may still move)."""
    with transaction.atomic():
        # The payment's row lock first, in the order job_retry and payment_trigger take theirs
        # (payment, then the job index): a retry inserting a job for this payment meanwhile
        # waits for this transaction instead of deadlocking with it.
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if not job_services.job_fail(
            job=job,
            worker_id=worker_id,
            code=error.code,
            message=error.message,
            report=hooks.report(),
        ):
            raise job_services.LeaseLost(f"job {job.pk} is no longer held by {worker_id}")
        if locked.money_may_move and error.code not in _CHAIN_VERDICTS:
            subscription_services.payment_await_settlement(
                payment=locked,
                code=errors.SettlementPending.code,
                message=f"transaction {locked.transaction_hash} may still settle; the chain "
                f"is asked again (job failed: {error.code})",
            )
            logger.warning(
                "job %s failed (%s) after broadcasting %s: payment %s is settlement_pending",
                job.pk,
                error.code,
                locked.transaction_hash,
                payment.pk,
            )
            return Outcome("failed")
        subscription_services.payment_record_failure(
            payment=payment, code=error.code, message=error.message
        )
    logger.warning("job %s failed: %s (%s)", job.pk, error.code, error.message)
    return Outcome("failed")


def _await_settlement(
    job: Job, payment: Payment, worker_id: str, error: errors.PaymentError, hooks: _Hooks
) -> Outcome:
    """Attempts spent on transient errors after a broadcast: the money may move, so neither
    the job nor the payment fails. The job waits (delayed, its attempt given back) and asks
    the chain again every AUTOPAY_SETTLEMENT_CHECK_SECONDS; the payment is settlement_pending;
    the subscription is not touched."""
    countdown = float(settings.AUTOPAY_SETTLEMENT_CHECK_SECONDS)
    message = (
        f"transaction {payment.transaction_hash} was broadcast; waiting for the chain "
        f"({error.code}: {error.message})"
    )
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if not job_services.job_delay(
            job=job,
            worker_id=worker_id,
            countdown=countdown,
            code=errors.SettlementPending.code,
            message=message,
            count_attempt=False,
            outcome=JobAttempt.Outcome.SETTLEMENT_PENDING,
            report=hooks.report(),
        ):
            raise job_services.LeaseLost(f"job {job.pk} is no longer held by {worker_id}")
        subscription_services.payment_await_settlement(
            payment=locked, code=errors.SettlementPending.code, message=message
        )
    logger.warning(
        "job %s: payment %s settlement pending (%s); asking the chain again in %.0fs",
        job.pk,
        payment.pk,
        error.code,
        countdown,
    )
    return Outcome("delayed", retry_in=countdown)


def _delay(
    job: Job,
    worker_id: str,
    error: errors.PaymentError,
    cause: BaseException,
    hooks: _Hooks,
    *,
    countdown: float,
    count_attempt: bool,
    outcome: str,
) -> Outcome:
    """Park the held job until ``countdown`` has passed, its attempt closed with ``outcome``
    (counted or given back); a job this worker no longer holds raises LeaseLost."""
    if not job_services.job_delay(
        job=job,
        worker_id=worker_id,
        countdown=countdown,
        code=error.code,
        message=error.message,
        count_attempt=count_attempt,
        outcome=outcome,
        report=hooks.report(),
    ):
        raise job_services.LeaseLost(f"job {job.pk} is no longer held by {worker_id}") from cause
    return Outcome("delayed", retry_in=countdown)


def _wait_for_configuration(
    job: Job,
    worker_id: str,
    error: errors.PaymentError,
    cause: BaseException,
    hooks: _Hooks,
) -> Outcome:
    """The operator's configuration stops this job: it waits (delayed, its attempt given
    back) and is tried again until the configuration is fixed. Nothing is charged and
    nothing is recorded against the payment or the subscription."""
    countdown = float(settings.AUTOPAY_CONFIGURATION_RETRY_SECONDS)
    outcome = _delay(
        job,
        worker_id,
        error,
        cause,
        hooks,
        countdown=countdown,
        count_attempt=False,
        outcome=JobAttempt.Outcome.CONFIGURATION_WAIT,
    )
    logger.error(
        "job %s waits for the operator: %s; checking again in %.0fs",
        job.pk,
        error.message,
        countdown,
    )
    return outcome


def _wait_out_fault(
    job: Job, worker_id: str, error: errors.PaymentError, cause: BaseException, hooks: _Hooks
) -> Outcome:
    """An infrastructure or operator fault (RPC, Redis, a timeout, no funded relayer) before
    any broadcast: the job waits, its attempt given back, with a backoff that grows with each
    wait up to AUTOPAY_FAULT_RETRY_MAX_SECONDS, and is paid when the fault is gone. Nothing is
    recorded against the payment or the subscription."""
    countdown = job_services.retry_countdown(
        attempts_made=job_services.job_waits(job=job) + 1,
        cap=float(settings.AUTOPAY_FAULT_RETRY_MAX_SECONDS),
    )
    outcome = _delay(
        job,
        worker_id,
        error,
        cause,
        hooks,
        countdown=countdown,
        count_attempt=False,
        outcome=JobAttempt.Outcome.WAITING,
    )
    logger.warning(
        "job %s waits out a%s fault (%s: %s); trying again in %.1fs",
        job.pk,
        "n operator" if error.fault == errors.Fault.OPERATOR else "n infrastructure",
        error.code,
        error.message,
        countdown,
    )
    return outcome


def _wait_for_settlement(
    job: Job, worker_id: str, error: errors.SettlementUnconfirmed, hooks: _Hooks
) -> Outcome:
    """A settle whose outcome is unknown (its answer lost or garbled) and not yet on chain:
    the payment stays in flight, never failed while its money may move. The job asks the
    chain again soon (the rail sends no new settle before the deadline); only the attempt that
    sent a settle uses up an attempt. A job out of attempts fails and leaves the payment in
    flight: the recovery sweep reconciles it by the chain."""
    settle_sent = hooks.settle_sent
    now = time.time()
    poll = max(settings.AUTOPAY_RETRY_BACKOFF_SECONDS, (now - error.sent_at) / 2)
    countdown = max(min(error.deadline - now, poll), 0.0)
    if settle_sent and job.attempts_made >= job.max_attempts:
        if not job_services.job_fail(
            job=job,
            worker_id=worker_id,
            code=error.code,
            message=error.message,
            report=hooks.report(),
        ):
            raise job_services.LeaseLost(f"job {job.pk} is no longer held by {worker_id}")
        logger.warning(
            "job %s failed: %s; payment %s stays in flight for the recovery sweep",
            job.pk,
            error.message,
            job.payment_id,
        )
        return Outcome("failed")
    if not job_services.job_delay(
        job=job,
        worker_id=worker_id,
        countdown=countdown,
        code=error.code,
        message=error.message,
        count_attempt=settle_sent,
        report=hooks.report(),
    ):
        raise job_services.LeaseLost(f"job {job.pk} is no longer held by {worker_id}")
    logger.warning("job %s: %s; asking the chain again in %.1fs", job.pk, error.message, countdown)
    return Outcome("delayed", retry_in=countdown)


def attempt_ended(
    job: Job,
    payment: Payment,
    worker_id: str,
    outcome: Settlement | errors.PaymentError,
    *,
    cause: BaseException | None = None,
    hooks: _Hooks | None = None,
) -> Outcome:
    """The one ending of an attempt, whichever path made it (one payment, or an item of a
    batch): the settlement is recorded, or the error's disposition decides (the rule book in
    ``subscriptions.errors``): wait, retry, fail and dun, or fail."""
    hooks = hooks or _Hooks(job, payment, worker_id)
    if isinstance(outcome, Settlement):
        return _record_success(job, payment, outcome, worker_id, hooks)
    error, cause = outcome, cause or outcome
    if isinstance(error, errors.SettlementUnconfirmed):
        return _wait_for_settlement(job, worker_id, error, hooks)
    disposition = error.disposition(attempts_left=job.attempts_made < job.max_attempts)
    if disposition == errors.Disposition.WAIT:
        if isinstance(error, errors.ConfigurationError):
            return _wait_for_configuration(job, worker_id, error, cause, hooks)
        payment.refresh_from_db()
        if payment.money_may_move:
            return _await_settlement(job, payment, worker_id, error, hooks)
        return _wait_out_fault(job, worker_id, error, cause, hooks)
    if disposition == errors.Disposition.RETRY:
        return _retry(job, worker_id, error, cause, hooks)
    if error.transient:
        payment.refresh_from_db()
        if payment.money_may_move:
            return _await_settlement(job, payment, worker_id, error, hooks)
    return _fail(job, payment, worker_id, error, hooks)


def _retry(
    job: Job, worker_id: str, error: errors.PaymentError, cause: BaseException, hooks: _Hooks
) -> Outcome:
    """Delay the job for another attempt, its attempt counted."""
    countdown = job_services.retry_countdown(attempts_made=job.attempts_made)
    outcome = _delay(
        job,
        worker_id,
        error,
        cause,
        hooks,
        countdown=countdown,
        count_attempt=True,
        outcome=JobAttempt.Outcome.RETRY,
    )
    logger.warning(
        "job %s attempt %d/%d: %s; retrying in %.1fs",
        job.pk,
        job.attempts_made,
        job.max_attempts,
        error.code,
        countdown,
    )
    return outcome


def process_job(*, job_id: str, worker_id: str) -> Outcome:
    """Process one job message. Safe to call any number of times for the same job."""
    close_old_connections()
    try:
        job = job_services.job_claim(job_id=job_id, worker_id=worker_id)
    except Job.DoesNotExist:
        job = None
    if job is None:
        exists = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
        if exists is None:
            logger.warning("job %s does not exist; message dropped", job_id)
        else:
            logger.info(
                "job %s not claimed (status %s); duplicate or early message", job_id, exists
            )
        return Outcome("skipped")
    try:
        with lease_heartbeat.holding(job_id=job.pk, worker_id=worker_id):
            return _process_claimed(job, worker_id)
    except (OperationalError, InterfaceError) as exc:
        # The database went away mid-attempt: nothing can be recorded now. The job keeps its
        # lease until it expires; recovery then takes it back, and the next attempt asks the
        # chain first (a transaction broadcast before the outage is found, not sent again).
        logger.warning("job %s interrupted: database unavailable (%s)", job.pk, exc)
        with contextlib.suppress(Exception):
            close_old_connections()
            job_services.job_attempt_close(
                job=job,
                worker_id=worker_id,
                outcome=JobAttempt.Outcome.INTERRUPTED,
                code=errors.DatabaseUnavailable.code,
                message=f"database unavailable: {type(exc).__name__}",
            )
        return Outcome("interrupted")
    except job_services.LeaseLost:
        logger.warning("job %s: lease lost to recovery; this worker stops", job.pk)
        job_services.job_attempt_close(
            job=job,
            worker_id=worker_id,
            outcome=JobAttempt.Outcome.LEASE_LOST,
            message="this worker lost the job's lease; another worker took over",
        )
        return Outcome("lease_lost")


def _process_claimed(job: Job, worker_id: str) -> Outcome:
    payment = Payment.objects.select_related("subscription").get(pk=job.payment_id)
    subscription = payment.subscription
    hooks = _Hooks(job, payment, worker_id)

    if payment.status == Payment.Status.COMPLETED:
        settlement = Settlement(payment.transaction_hash, payment.block_number, reconciled=True)
        job_services.job_complete(
            job=job,
            worker_id=worker_id,
            result=settlement_result(payment, settlement),
            report=hooks.report(),
        )
        return Outcome("completed")

    if not subscription.auto_pay_enabled or subscription.status not in (
        Subscription.Status.ACTIVE,
        Subscription.Status.PAST_DUE,
    ):
        return _fail(
            job,
            payment,
            worker_id,
            errors.SubscriptionNotActive(
                f"subscription is {subscription.status}"
                + ("" if subscription.auto_pay_enabled else " with auto-pay off")
            ),
            hooks,
        )
    job_services.job_progress(job=job, worker_id=worker_id, progress=Progress.VALIDATED)

    try:
        # Everything below talks to the payment's own network (its RPC, relayer, token).
        with use_network(payment_network(payment)):
            intent = subscription_intent(payment, payment_intent(payment))
            rail = get_rail(intent)
            if rail is None:
                raise errors.RailNotConfigured(
                    "no payment rail is configured (AUTOPAY_PAYMENT_RAIL); nothing was charged"
                )
            settlement = rail.reconcile(intent) or rail.pay(intent, hooks)
    except ImproperlyConfigured as exc:
        return attempt_ended(
            job, payment, worker_id, errors.ConfigurationError(str(exc)), cause=exc, hooks=hooks
        )
    except errors.PaymentError as error:
        return attempt_ended(job, payment, worker_id, error, hooks=hooks)
    except (job_services.LeaseLost, OperationalError, InterfaceError):
        raise
    except SoftTimeLimitExceeded as exc:
        # Slow chain or facilitator: the infrastructure's, never a bug and never the customer's.
        return attempt_ended(
            job,
            payment,
            worker_id,
            errors.AttemptTimeout("the attempt ran past the task's soft time limit"),
            cause=exc,
            hooks=hooks,
        )
    except Exception as exc:
        # A bug or an unforeseen failure: fail loudly, never retry blindly. If a transaction
        # was broadcast the payment is settlement_pending and the reconcile sweep asks the chain.
        logger.exception("job %s: unexpected error", job.pk)
        internal = errors.InternalError(f"internal error: {type(exc).__name__}")
        return _fail(job, payment, worker_id, internal, hooks)
    return attempt_ended(job, payment, worker_id, settlement, hooks=hooks)
