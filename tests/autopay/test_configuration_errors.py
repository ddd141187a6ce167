"""The operator's configuration errors are never the customer's: jobs wait, health says why.

Real PostgreSQL, Redis and anvil; the engine runs in this process, and a real worker shows its
start-up line.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from autopay import engine
from autopay.chain.client import token_balance
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.custody import decrypt_private_key
from subscriptions.models import PayerWallet, Payment, Subscription
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]


def _process(job: Job) -> engine.Outcome:
    return engine.process_job(job_id=str(job.pk), worker_id="config-test")


def _assert_waits_untouched(job: Job, subscription: Subscription, payer_before: int) -> None:
    job.refresh_from_db()
    assert job.status == Job.Status.DELAYED
    assert job.error_code == "configuration_error"
    assert job.attempts_made == 0  # waiting for the operator uses up no attempt
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status != Payment.Status.FAILED
    assert payment.transaction_hash == ""
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    assert token_balance(subscription.token_address, subscription.payer_address) == payer_before


@pytest.mark.chain
@pytest.mark.parametrize(
    "break_configuration",
    [
        pytest.param(
            lambda settings: setattr(
                settings, "AUTOPAY_KEY_ENCRYPTION_KEYS", [Fernet.generate_key().decode()]
            ),
            id="wrong-encryption-key",
        ),
        pytest.param(
            lambda settings: setattr(settings, "AUTOPAY_KEY_ENCRYPTION_KEYS", []),
            id="no-encryption-key",
        ),
        pytest.param(
            lambda settings: setattr(settings, "RELAYER_PRIVATE_KEY", ""), id="no-relayer-key"
        ),
        pytest.param(
            lambda settings: setattr(settings, "TOKEN_EIP712_NAME", "Not The Token"),
            id="token-domain-mismatch",
        ),
    ],
)
def test_a_configuration_error_makes_the_job_wait_then_pay_once_fixed(
    engine_settings: Any,
    paying_subscription: Callable[..., Subscription],
    break_configuration: Callable[[Any], None],
    client: Client,
) -> None:
    from autopay.chain import relayer

    settings = engine_settings
    settings.AUTOPAY_CONFIGURATION_RETRY_SECONDS = 0
    settings.AUTOPAY_KEY_ENCRYPTION_KEY = ""
    working_keys = list(settings.AUTOPAY_KEY_ENCRYPTION_KEYS)
    working = {
        name: getattr(settings, name)
        for name in ("AUTOPAY_KEY_ENCRYPTION_KEYS", "RELAYER_PRIVATE_KEY", "TOKEN_EIP712_NAME")
    }
    subscription = paying_subscription(amount="5")
    payer_before = token_balance(subscription.token_address, subscription.payer_address)
    break_configuration(settings)
    relayer._relayers.clear()
    job = payment_trigger(subscription=subscription)

    outcome = _process(job)

    assert outcome.status == "delayed"
    _assert_waits_untouched(job, subscription, payer_before)
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["payments"] == "misconfigured"
    problems = " ".join(health.json()["paymentsProblems"])
    assert "configuration_error" in problems
    for secret in [*working_keys, working["RELAYER_PRIVATE_KEY"]]:
        assert secret not in health.content.decode()

    # Fixed: the same job pays, exactly once.
    for name, value in working.items():
        setattr(settings, name, value)
    relayer._relayers.clear()
    assert _process(job).status == "completed"
    job.refresh_from_db()
    assert (job.status, job.attempts_made) == (Job.Status.COMPLETED, 1)
    assert token_balance(subscription.token_address, subscription.payer_address) == (
        payer_before - 5 * 10**6
    )
    assert client.get("/health").json()["payments"] == "ok"


@pytest.mark.parametrize(
    ("change", "part"),
    [
        ({"AUTOPAY_KEY_ENCRYPTION_KEYS": []}, "wallet keys"),
        ({"AUTOPAY_KEY_ENCRYPTION_KEYS": ["not-a-fernet-key"]}, "wallet keys"),
        ({"RELAYER_PRIVATE_KEY": ""}, "relayer"),
        ({"RELAYER_PRIVATE_KEY": "0x1234"}, "relayer"),
        ({"TOKEN_ADDRESS": "", "AUTOPAY_NETWORK_TOKENS": {}}, "token"),
    ],
)
def test_health_names_the_misconfigured_part(
    settings: Any, client: Client, change: dict[str, Any], part: str
) -> None:
    settings.AUTOPAY_KEY_ENCRYPTION_KEY = ""
    for name, value in change.items():
        setattr(settings, name, value)

    response = client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["payments"] == "misconfigured"
    assert any(problem.startswith(part) for problem in body["paymentsProblems"]), body


def test_a_changed_encryption_key_is_noticed_by_health(settings: Any, client: Client) -> None:
    from tests.factories import PayerWalletFactory

    PayerWalletFactory.create()
    settings.AUTOPAY_KEY_ENCRYPTION_KEY = ""
    settings.AUTOPAY_KEY_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    body = client.get("/health").json()

    assert body["payments"] == "misconfigured"
    assert any("cannot be decrypted" in problem for problem in body["paymentsProblems"])


def test_key_rotation_reencrypts_every_wallet_with_the_newest_key(settings: Any) -> None:
    from tests.factories import PayerWalletFactory

    old_key = Fernet.generate_key().decode()
    new_key = Fernet.generate_key().decode()
    settings.AUTOPAY_KEY_ENCRYPTION_KEY = ""
    settings.AUTOPAY_KEY_ENCRYPTION_KEYS = [old_key]
    wallets = PayerWalletFactory.create_batch(3)
    plain = {wallet.pk: decrypt_private_key(wallet.encrypted_private_key) for wallet in wallets}

    settings.AUTOPAY_KEY_ENCRYPTION_KEYS = [new_key, old_key]
    out = io.StringIO()
    call_command("autopay_rotate_wallet_keys", "--no-progress", stdout=out)
    assert "3 wallet(s) re-encrypted" in out.getvalue()

    # The old key can go: every wallet decrypts with the new one alone, to the same key.
    settings.AUTOPAY_KEY_ENCRYPTION_KEYS = [new_key]
    for wallet in PayerWallet.objects.all():
        assert decrypt_private_key(wallet.encrypted_private_key) == plain[wallet.pk]
    again = io.StringIO()
    call_command("autopay_rotate_wallet_keys", "--no-progress", stdout=again)
    assert "0 wallet(s) re-encrypted with the newest key, 3 already on it" in again.getvalue()

    # A wallet no configured key opens is reported, never silently skipped.
    settings.AUTOPAY_KEY_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CommandError, match="could not be decrypted"):
        call_command("autopay_rotate_wallet_keys", "--no-progress", stdout=io.StringIO())


@pytest.mark.worker
def test_worker_logs_one_clear_line_at_start_up(start_worker: Callable[..., Any]) -> None:
    worker = start_worker(extra_env={"RELAYER_PRIVATE_KEY": "", "LOG_LEVEL": "INFO"})

    line = wait_for(
        lambda: next(
            (row for row in worker.log().splitlines() if "payments are misconfigured" in row),
            None,
        ),
        timeout=20,
    )
    assert "RELAYER_PRIVATE_KEY is not set" in line
