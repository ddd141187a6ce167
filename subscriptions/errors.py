"""Payment error taxonomy: every failure has a stable code and is either transient or permanent.

Transient errors are retried by the job (attempts with exponential backoff); permanent errors
fail the job at once. Codes are part of the API (jobs' and payments' ``error_code``).
"""

from __future__ import annotations


class PaymentError(Exception):
    """Base class. ``code`` is stable and machine-readable; the message is for humans."""

    code = "payment_error"
    transient = False

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        if code:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


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


class FacilitatorUnavailable(TransientPaymentError):
    """The facilitator could not be reached, timed out, answered 5xx, or gave an answer that
    is not one (a body that is not JSON) to a request that moves no money (/verify, or a
    /settle that never left this machine)."""

    code = "facilitator_unavailable"


class NonceRace(TransientPaymentError):
    """The relayer's transaction nonce was taken by another sender; retry with a fresh one."""

    code = "relayer_nonce_conflict"


class SettlementPending(TransientPaymentError):
    """The settlement transaction is broadcast but not yet confirmed."""

    code = "settlement_pending"


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


class ConfigurationError(TransientPaymentError):
    """The operator's configuration stops payments (encryption key, relayer key, token,
    facilitator credentials). Never the customer's fault: the job waits, its attempts
    untouched, the subscription is not moved to past_due, and /health names the part."""

    code = "configuration_error"


class InsufficientBalance(PermanentPaymentError):
    """The payer's token balance is lower than the amount due."""

    code = "insufficient_balance"


class InvalidSignature(PermanentPaymentError):
    """The authorization's signature does not recover to the payer."""

    code = "invalid_signature"


class AuthorizationExpired(PermanentPaymentError):
    """The authorization's validity window has passed."""

    code = "authorization_expired"


class SubscriptionNotActive(PermanentPaymentError):
    """The subscription is no longer active or auto-pay is off."""

    code = "subscription_not_active"


class RailNotConfigured(PermanentPaymentError):
    """No payment rail is configured; nothing was charged."""

    code = "rail_not_configured"


class SignerUnavailable(PermanentPaymentError):
    """No signer may authorize payments for this payer: no wallet of the subscription's owner
    is attached, or the attached wallet does not hold the payer's key."""

    code = "signer_unavailable"


class SettlementReverted(PermanentPaymentError):
    """The settlement transaction was mined but reverted."""

    code = "settlement_reverted"


class AttemptTimeout(TransientPaymentError):
    """The attempt ran past the task's soft time limit (slow chain or facilitator)."""

    code = "attempt_timeout"


class RedisUnavailable(TransientPaymentError):
    """The relayer's bookkeeping (nonces, locks) in Redis could not be reached."""

    code = "redis_unavailable"


class InternalError(PermanentPaymentError):
    """A bug or an unforeseen failure: failed loudly, never retried blindly."""

    code = "internal_error"


class UnsupportedNetwork(PermanentPaymentError):
    """The payment is on a network this engine does not pay on."""

    code = "unsupported_network"


class AuthorizationCanceled(PermanentPaymentError):
    """The payer canceled this period's authorization on chain (cancelAuthorization)."""

    code = "authorization_canceled"


class AuthorizationMissing(PermanentPaymentError):
    """A pre-signed subscription has no usable authorization for this period: none was
    uploaded, its window has ended, or it was signed for other terms (amount, recipient)."""

    code = "authorization_missing"


class RequirementsMismatch(PermanentPaymentError):
    """The service's x402 payment requirements differ from the subscription (asset, network,
    recipient, a higher amount) or are x402 v1: nothing was signed."""

    code = "requirements_mismatch"


class ResourceUnavailable(TransientPaymentError):
    """Before any payment was sent, the service's paid endpoint was not allowed (any more), could
    not be reached, or answered anything but a 402 with readable requirements. One message for
    the subscriber whatever the cause (it would tell ports apart); the log has the detail."""

    code = "resource_unavailable"


class ResourceRefused(PermanentPaymentError):
    """The service's paid endpoint refused the payment (a 4xx after paying, with a reason that
    retrying cannot fix)."""

    code = "resource_refused"


class ServiceNotSettled(TransientPaymentError):
    """The service accepted the payment header but the chain shows no settlement of our
    authorization (yet): the next attempt asks the chain first, then pays with the same
    nonce, so at most one charge."""

    code = "service_not_settled"


class SettlementFailed(PermanentPaymentError):
    """The settlement's simulation or transaction failed for a reason retrying cannot fix."""

    code = "settlement_failed"


class FacilitatorRejected(PermanentPaymentError):
    """A remote facilitator refused the payment before settling it: /verify answered a 4xx
    (other than 401/403, which are our credentials) or a refusal with a reason we do not
    classify, or /settle stated such a refusal in a well-formed settle response."""

    code = "facilitator_rejected"


class WorkerLost(PermanentPaymentError):
    """The job's worker died too many times (killed or timed out); the period stays owed."""

    code = "worker_lost"


class SettlementLost(PermanentPaymentError):
    """The payment's transaction left the chain (dropped) and its authorization is unused."""

    code = "settlement_lost"
