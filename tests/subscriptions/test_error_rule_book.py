"""The rule book of payment failures (``subscriptions.errors``): every code is a class that
says whether retrying can fix it and whose fault it is, and only the customer's own failures
(and a service's refusal) ever move a subscription to dunning. Checked for every code, the
rule on the classes and its effect on real rows in PostgreSQL."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

# Imported for their subclasses: the relayer's errors live beside the relayer.
from autopay.chain import client as chain_client  # noqa: F401
from autopay.chain import relayer  # noqa: F401
from subscriptions import errors
from subscriptions.errors import Disposition, Fault
from subscriptions.models import Payment, Subscription
from subscriptions.services import payment_build, payment_record_failure
from tests.factories import SubscriptionFactory

REPO_ROOT = Path(__file__).resolve().parents[2]


def _all_classes() -> list[type[errors.PaymentError]]:
    found: list[type[errors.PaymentError]] = []
    todo: list[type[errors.PaymentError]] = [errors.PaymentError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.code)


CLASSES = _all_classes()
PAYMENT_ERROR_NAMES = {cls.__name__ for cls in CLASSES}
# What the customer did (or a service refused): the only failures that count toward dunning.
CUSTOMER_CODES = {
    "insufficient_balance",
    "invalid_signature",
    "authorization_expired",
    "authorization_canceled",
    "authorization_missing",
    "invalid_authorization",
    "signer_unavailable",
    "unsupported_payer_wallet",
    "requirements_mismatch",
    "resource_refused",
    "facilitator_rejected",
}
# Infrastructure and operator faults: never the customer's, the job waits for them.
WAITING_CODES = {
    "rpc_unavailable",
    "facilitator_unavailable",
    "relayer_nonce_conflict",
    "settlement_pending",
    "settlement_unconfirmed",
    "configuration_error",
    "rail_not_configured",
    "unsupported_network",
    "attempt_timeout",
    "redis_unavailable",
    "authorization_not_yet_valid",
    "chain_clock_ahead",
    "chain_reorg",
    "database_unavailable",
    "relayer_unavailable",
    "relayer_unfunded",
    "relayer_error",
}


def test_every_code_is_one_class_with_a_fault_and_a_reason() -> None:
    # A subclass may narrow a class (ChainUnavailable is an rpc_unavailable), never reuse
    # another class's code.
    codes = [cls.code for cls in CLASSES if "code" in vars(cls)]
    assert len(codes) == len(set(codes)), "a code with two classes"
    for cls in CLASSES:
        assert isinstance(cls.fault, Fault), cls
        assert cls.__doc__ and len(cls.__doc__) > 20, f"{cls.__name__} says nothing of itself"
    assert errors.error_class("insufficient_balance") is errors.InsufficientBalance
    assert errors.error_class("relayer_unfunded").__name__ == "RelayerUnfunded"
    assert errors.error_class("no_such_code") is errors.PaymentError


def _code_literals_passed_to_errors() -> list[str]:
    """``SomeError(..., code="...")`` anywhere in the product: a code that is a string, not a
    class, is a rule written outside the rule book."""
    found = []
    for app in ("autopay", "jobs", "subscriptions", "core"):
        for path in sorted((REPO_ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", "")
                if name not in PAYMENT_ERROR_NAMES:
                    continue
                for keyword in node.keywords:
                    if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                        found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_no_error_code_is_made_up_outside_the_rule_book() -> None:
    assert _code_literals_passed_to_errors() == []


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.code)
def test_the_disposition_follows_whose_fault_it_is(cls: type[errors.PaymentError]) -> None:
    with_attempts = cls.disposition(attempts_left=True)
    spent = cls.disposition(attempts_left=False)
    if cls.code in WAITING_CODES:
        assert cls.fault in (Fault.OPERATOR, Fault.INFRASTRUCTURE)
        assert spent == Disposition.WAIT
        # A broadcast not yet confirmed is looked at again soon while attempts last.
        in_flight = issubclass(cls, errors.SettlementPending)
        assert with_attempts == (Disposition.RETRY if in_flight else Disposition.WAIT)
    elif cls.code in CUSTOMER_CODES:
        assert cls.counts_toward_dunning()
        assert with_attempts == spent == Disposition.FAIL_AND_DUN
    else:
        # Ours (a bug, an outcome we cannot classify), a transient service answer, or the
        # subscription not active: never dunning.
        assert not cls.counts_toward_dunning()
        assert spent == Disposition.FAIL
        assert with_attempts == (Disposition.RETRY if cls.transient else Disposition.FAIL)


@pytest.mark.django_db
@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.code)
def test_a_failed_payment_moves_the_subscription_only_when_it_is_the_customers(
    cls: type[errors.PaymentError], user: Any
) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    payment = payment_build(subscription=subscription, index=0)
    payment.save()

    payment_record_failure(payment=payment, code=cls.code, message="test")

    subscription.refresh_from_db()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED and payment.error_code == cls.code
    expected = (
        Subscription.Status.PAST_DUE if cls.code in CUSTOMER_CODES else Subscription.Status.ACTIVE
    )
    assert subscription.status == expected, f"{cls.code} ({cls.fault})"
