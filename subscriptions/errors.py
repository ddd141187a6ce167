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
    """The facilitator could not be reached, timed out or answered 5xx."""

    code = "facilitator_unavailable"


class NonceRace(TransientPaymentError):
    """The relayer's transaction nonce was taken by another sender; retry with a fresh one."""

    code = "relayer_nonce_conflict"


class SettlementPending(TransientPaymentError):
    """The settlement transaction is broadcast but not yet confirmed."""

    code = "settlement_pending"


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


class SettlementFailed(PermanentPaymentError):
    """The settlement's simulation or transaction failed for a reason retrying cannot fix."""

    code = "settlement_failed"


class FacilitatorRejected(PermanentPaymentError):
    """A remote facilitator refused the payment before settling it."""

    code = "facilitator_rejected"


class WorkerLost(PermanentPaymentError):
    """The job's worker died too many times (killed or timed out); the period stays owed."""

    code = "worker_lost"


class SettlementLost(PermanentPaymentError):
    """The payment's transaction left the chain (dropped) and its authorization is unused."""

    code = "settlement_lost"
