"""Payment error taxonomy, the one rule book of failures: every failure is a class with a
stable code, says whether retrying can fix it (``transient``) and whose fault it is
(``fault``). Codes are part of the API (jobs' and payments' ``error_code``).

What the engine does with an error follows from those two facts alone (``disposition``):
- the operator's or the infrastructure's fault (configuration, a dry relayer, the RPC, the
  broker, the database, a timeout): the job **waits**, its attempt given back, and is paid
  when the fault is fixed; the payment is not failed and the subscription is not moved;
- transient otherwise, with attempts left: **retry** with backoff;
- the customer's own failure (balance, a canceled, missing or expired authorization, a bad
  signature) or a service refusing: the job and payment **fail and dunning** takes the
  subscription (past_due, retried on later scans);
- anything else (our own bug, an outcome we cannot classify): the job and payment **fail**,
  the subscription is not moved, and an operator decides (``autopay_retry_failed``).
"""

from __future__ import annotations

from enum import StrEnum


class Fault(StrEnum):
    """Whose fault a failure is."""

    CUSTOMER = "customer"  # the payer: balance, authorization, signature, wallet
    SERVICE = "service"  # the paid service (or its facilitator) refusing or misbehaving
    OPERATOR = "operator"  # our configuration: keys, token, rail, networks, relayer funds
    INFRASTRUCTURE = "infrastructure"  # RPC, broker, database, Redis, timeouts, a service down
    ENGINE = "engine"  # a bug of ours, or an outcome we cannot classify


class Disposition(StrEnum):
    """What the engine does with a job whose attempt ended in an error."""

    WAIT = "wait"  # delayed, the attempt given back; nothing recorded against the customer
    RETRY = "retry"  # delayed with backoff, the attempt counted
    FAIL_AND_DUN = "fail_and_dun"  # job and payment failed; the subscription goes to dunning
    FAIL = "fail"  # job and payment failed; the subscription is not moved


class PaymentError(Exception):
    """Base class. ``code`` is stable and machine-readable; the message is for humans."""

    code = "payment_error"
    transient = False
    fault = Fault.ENGINE

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        if code:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code

    @classmethod
    def counts_toward_dunning(cls) -> bool:
        """Only the customer's own failures, and a service's refusal, move a subscription."""
        return not cls.transient and cls.fault in (Fault.CUSTOMER, Fault.SERVICE)

    @classmethod
    def disposition(cls, *, attempts_left: bool) -> Disposition:
        """The one rule: what a job whose attempt ended in this error becomes."""
        if cls.fault in (Fault.OPERATOR, Fault.INFRASTRUCTURE):
            return Disposition.WAIT
        if cls.transient and attempts_left:
            return Disposition.RETRY
        if cls.counts_toward_dunning():
            return Disposition.FAIL_AND_DUN
        return Disposition.FAIL


class TransientPaymentError(PaymentError):
    """A temporary failure (RPC or facilitator unreachable, timeout, 5xx, nonce race)."""

    code = "transient_error"
    transient = True


class PermanentPaymentError(PaymentError):
    """A failure that retrying cannot fix."""

    code = "permanent_error"


class RpcUnavailable(TransientPaymentError):
    """The chain's RPC endpoint could not be reached or timed out."""

    code = "rpc_unavailable"
    fault = Fault.INFRASTRUCTURE


class FacilitatorUnavailable(TransientPaymentError):
    """The facilitator could not be reached, timed out, answered 5xx, or gave an answer that
    is not one (a body that is not JSON) to a request that moves no money (/verify, or a
    /settle that never left this machine)."""

    code = "facilitator_unavailable"
    fault = Fault.INFRASTRUCTURE


class NonceRace(TransientPaymentError):
    """The relayer's transaction nonce was taken by another sender; retry with a fresh one."""

    code = "relayer_nonce_conflict"
    fault = Fault.INFRASTRUCTURE


class SettlementPending(TransientPaymentError):
    """The settlement transaction is broadcast but not yet confirmed."""

    code = "settlement_pending"
    fault = Fault.INFRASTRUCTURE

    @classmethod
    def disposition(cls, *, attempts_left: bool) -> Disposition:
        # Money may move: the job looks again soon while it has attempts, then waits for the
        # chain (settlement_pending), never failed and never the customer's.
        return Disposition.RETRY if attempts_left else Disposition.WAIT


class SettlementUnconfirmed(SettlementPending):
    """A remote facilitator was asked to settle and gave no usable answer (a timeout, a
    closed connection, a 4xx or 5xx without a refusal, a body that is not a settle response),
    and the chain does not show the transfer yet. The payment stays in flight: its job asks
    the chain again without using up attempts, and no second settle is sent before
    ``deadline`` (the first may still be running at the facilitator)."""

    code = "settlement_unconfirmed"

    def __init__(self, message: str = "", *, sent_at: float, deadline: float) -> None:
        super().__init__(message)
        self.sent_at = sent_at
        self.deadline = deadline


class BatchItemFailed(TransientPaymentError):
    """The payment's call failed inside a batch settlement transaction (or the batch did not
    land): the next attempt asks the chain and, if it is still unpaid, pays it alone."""

    code = "batch_item_failed"
    fault = Fault.ENGINE


class ConfigurationError(TransientPaymentError):
    """The operator's configuration stops payments (encryption key, relayer key, token,
    facilitator credentials). Never the customer's fault: the job waits, its attempts
    untouched, the subscription is not moved to past_due, and /health names the part."""

    code = "configuration_error"
    fault = Fault.OPERATOR


class RailNotConfigured(ConfigurationError):
    """No payment rail is configured (AUTOPAY_PAYMENT_RAIL=none): nothing is charged and the
    job waits for the operator, like any configuration error."""

    code = "rail_not_configured"
    fault = Fault.OPERATOR


class InsufficientBalance(PermanentPaymentError):
    """The payer's token balance is lower than the amount due."""

    code = "insufficient_balance"
    fault = Fault.CUSTOMER


class InvalidSignature(PermanentPaymentError):
    """The authorization's signature does not recover to the payer."""

    code = "invalid_signature"
    fault = Fault.CUSTOMER


class AuthorizationExpired(PermanentPaymentError):
    """The authorization's validity window has passed."""

    code = "authorization_expired"
    fault = Fault.CUSTOMER


class SubscriptionNotActive(PermanentPaymentError):
    """The subscription is no longer active or auto-pay is off."""

    code = "subscription_not_active"
    fault = Fault.CUSTOMER

    @classmethod
    def counts_toward_dunning(cls) -> bool:
        return False  # nothing is owed while it is not active: there is nothing to dun


class SignerUnavailable(PermanentPaymentError):
    """No signer may authorize payments for this payer: no wallet of the subscription's owner
    is attached, or the attached wallet does not hold the payer's key."""

    code = "signer_unavailable"
    fault = Fault.CUSTOMER


class SettlementReverted(PermanentPaymentError):
    """The settlement transaction was mined but reverted."""

    code = "settlement_reverted"
    fault = Fault.ENGINE


class AttemptTimeout(TransientPaymentError):
    """The attempt ran past the task's soft time limit (slow chain or facilitator)."""

    code = "attempt_timeout"
    fault = Fault.INFRASTRUCTURE


class RedisUnavailable(TransientPaymentError):
    """The relayer's bookkeeping (nonces, locks) in Redis could not be reached."""

    code = "redis_unavailable"
    fault = Fault.INFRASTRUCTURE


class InternalError(PermanentPaymentError):
    """A bug or an unforeseen failure: failed loudly, never retried blindly."""

    code = "internal_error"
    fault = Fault.ENGINE


class UnsupportedNetwork(PermanentPaymentError):
    """The payment is on a network this engine does not pay on."""

    code = "unsupported_network"
    fault = Fault.OPERATOR


class AuthorizationCanceled(PermanentPaymentError):
    """The payer canceled this period's authorization on chain (cancelAuthorization)."""

    code = "authorization_canceled"
    fault = Fault.CUSTOMER


class AuthorizationMissing(PermanentPaymentError):
    """A pre-signed subscription has no usable authorization for this period: none was
    uploaded, its window has ended, or it was signed for other terms (amount, recipient)."""

    code = "authorization_missing"
    fault = Fault.CUSTOMER


class RequirementsMismatch(PermanentPaymentError):
    """The service's x402 payment requirements differ from the subscription (asset, network,
    recipient, a higher amount) or are x402 v1: nothing was signed."""

    code = "requirements_mismatch"
    fault = Fault.SERVICE


class ResourceUnavailable(TransientPaymentError):
    """Before any payment was sent, the service's paid endpoint was not allowed (any more), could
    not be reached, or answered anything but a 402 with readable requirements. One message for
    the subscriber whatever the cause (it would tell ports apart); the log has the detail."""

    code = "resource_unavailable"
    fault = Fault.SERVICE


class ResourceRefused(PermanentPaymentError):
    """The service's paid endpoint refused the payment (a 4xx after paying, with a reason that
    retrying cannot fix)."""

    code = "resource_refused"
    fault = Fault.SERVICE


class ServiceNotSettled(TransientPaymentError):
    """The service accepted the payment header but the chain shows no settlement of our
    authorization (yet): the next attempt asks the chain first, then pays with the same
    nonce, so at most one charge."""

    code = "service_not_settled"
    fault = Fault.SERVICE


class SettlementFailed(PermanentPaymentError):
    """The settlement's simulation or transaction failed for a reason retrying cannot fix."""

    code = "settlement_failed"
    fault = Fault.ENGINE


class FacilitatorRejected(PermanentPaymentError):
    """A remote facilitator refused the payment before settling it: /verify answered a 4xx
    (other than 401/403, which are our credentials) or a refusal with a reason we do not
    classify, or /settle stated such a refusal in a well-formed settle response."""

    code = "facilitator_rejected"
    fault = Fault.SERVICE


class WorkerLost(PermanentPaymentError):
    """The job's worker died too many times (killed or timed out); the period stays owed."""

    code = "worker_lost"
    fault = Fault.ENGINE


class SettlementLost(PermanentPaymentError):
    """The payment's transaction left the chain (dropped) and its authorization is unused."""

    code = "settlement_lost"
    fault = Fault.ENGINE


class AuthorizationNotYetValid(TransientPaymentError):
    """The authorization's validity window has not begun (a pre-signed period signed to start
    later, or our clock ahead of the chain's): the job waits for it, nothing is charged."""

    code = "authorization_not_yet_valid"
    fault = Fault.INFRASTRUCTURE


class ChainClockAhead(TransientPaymentError):
    """The chain calls a freshly signed authorization expired: its clock is ahead of ours. The
    next attempt signs a new window; nothing is charged."""

    code = "chain_clock_ahead"
    fault = Fault.INFRASTRUCTURE


class InvalidAuthorization(PermanentPaymentError):
    """The authorization does not match the payment (token, recipient or amount)."""

    code = "invalid_authorization"
    fault = Fault.CUSTOMER


class UnsupportedPayerWallet(PermanentPaymentError):
    """The payer's wallet cannot sign for the token (an undeployed smart wallet)."""

    code = "unsupported_payer_wallet"
    fault = Fault.CUSTOMER


class SettlementMismatch(PermanentPaymentError):
    """The settlement's Transfer event does not match the authorization."""

    code = "settlement_mismatch"
    fault = Fault.ENGINE


class ChainReorg(TransientPaymentError):
    """The payment's transaction left the canonical chain; it is settled again."""

    code = "chain_reorg"
    fault = Fault.INFRASTRUCTURE


class DatabaseUnavailable(TransientPaymentError):
    """The database went away mid-attempt; the job is taken back when its lease expires."""

    code = "database_unavailable"
    fault = Fault.INFRASTRUCTURE


class RelayerUnavailable(TransientPaymentError):
    """No relayer of the network's pool can pay for gas now (every one is below
    RELAYER_MIN_BALANCE_ETH or was refused for funds): the operator funds one, the job waits."""

    code = "relayer_unavailable"
    fault = Fault.OPERATOR


def _all_error_classes() -> dict[str, type[PaymentError]]:
    found: dict[str, type[PaymentError]] = {}
    todo: list[type[PaymentError]] = [PaymentError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return found


def error_class(code: str) -> type[PaymentError]:
    """The class of a stored error code (subclasses defined elsewhere, such as the relayer's,
    included); an unknown code is the engine's (never counted against a customer)."""
    return _all_error_classes().get(code, PaymentError)
