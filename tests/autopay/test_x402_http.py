"""The x402 HTTP handshake end to end: real Celery workers pay a real paid service (the demo
service of autopay.devtools.paid_service: Flask behind the x402 SDK's payment middleware, with
its own facilitator and relayer key) on anvil. Honest, mismatched and misbehaving services,
and a worker killed after the service settled: one charge, recorded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from web3 import Web3
from werkzeug.serving import make_server

from autopay.chain.abi import AUTHORIZATION_USED_TOPIC
from autopay.chain.client import token_balance
from autopay.devtools.anvil import ANVIL_DEV_KEYS, free_port
from autopay.devtools.paid_service import build_app
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.models import Payment, Subscription
from tests.conftest import wait_for
from tests.factories import SubscriptionFactory, new_address

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain, pytest.mark.worker]

PRICE_ATOMIC = 5_000_000
FUNDS = 100 * 10**6


class PaidService:
    def __init__(self, url: str, pay_to: str) -> None:
        self.url = url
        self.pay_to = pay_to


@pytest.fixture
def paid_service(
    anvil: Any, token_address: str, engine_settings: Any
) -> Iterator[Callable[..., PaidService]]:
    """Start the demo paid service (in a thread of this process, over real HTTP)."""
    servers: list[Any] = []

    def start(slow_seconds: float = 3.0) -> PaidService:
        pay_to = new_address()
        app = build_app(
            rpc_url=anvil.rpc_url,
            network="eip155:31337",
            token_address=token_address,
            token_name="USD Coin",
            token_version="2",
            pay_to=pay_to,
            price_atomic=PRICE_ATOMIC,
            # The service's own facilitator relayer: not ours (dev key 1).
            facilitator_key=ANVIL_DEV_KEYS[2],
            slow_seconds=slow_seconds,
        )
        server = make_server("127.0.0.1", free_port(), app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return PaidService(f"http://127.0.0.1:{server.server_port}", pay_to)

    engine_settings.AUTOPAY_RESOURCE_ALLOWED_HOSTS = ["127.0.0.1"]
    yield start
    for server in servers:
        server.shutdown()


def _subscription(
    funded_wallet: Any, token_address: str, service: PaidService, path: str, amount: str = "5"
) -> Subscription:
    wallet = funded_wallet(FUNDS)
    return SubscriptionFactory.create(
        owner=wallet.owner,
        wallet=wallet,
        payer_address=wallet.address,
        recipient_address=service.pay_to,
        token_address=token_address,
        amount=Decimal(amount),
        resource_url=f"{service.url}{path}",
    )


def _done(job: Job) -> Job | None:
    job.refresh_from_db()
    return job if job.status in (Job.Status.COMPLETED, Job.Status.FAILED) else None


def _uses(w3: Web3, token_address: str, payer: str) -> int:
    """How many EIP-3009 authorizations of ``payer`` were used on chain."""
    return len(
        w3.eth.get_logs(
            {
                "address": Web3.to_checksum_address(token_address),
                "fromBlock": 0,
                "toBlock": "latest",
                "topics": [AUTHORIZATION_USED_TOPIC, "0x" + "0" * 24 + payer[2:].lower()],
            }
        )
    )


WORKER_ENV = {"AUTOPAY_RESOURCE_ALLOWED_HOSTS": "127.0.0.1"}


def test_worker_pays_through_the_services_own_x402_endpoint(
    paid_service: Callable[..., PaidService],
    funded_wallet: Any,
    token_address: str,
    start_worker: Any,
    w3: Web3,
    relayer: Any,
) -> None:
    service = paid_service()
    subscription = _subscription(funded_wallet, token_address, service, "/plans/pro")
    our_relayer_nonce = w3.eth.get_transaction_count(relayer.address)
    start_worker(extra_env=WORKER_ENV)

    job = payment_trigger(subscription=subscription)
    wait_for(lambda: _done(job), timeout=60)

    assert job.status == Job.Status.COMPLETED, (job.error_code, job.error)
    assert job.result is not None
    receipt = job.result["serviceReceipt"]
    assert receipt["status"] == 200 and receipt["amountAtomic"] == str(PRICE_ATOMIC)
    assert receipt["settleResponse"]["success"] is True
    # Recorded from the chain (our nonce's AuthorizationUsed event), which agrees with the
    # service's receipt.
    assert receipt["settleResponse"]["transaction"] == job.result["transactionHash"]
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    assert token_balance(token_address, service.pay_to) == PRICE_ATOMIC
    assert token_balance(token_address, subscription.payer_address) == FUNDS - PRICE_ATOMIC
    # The service's facilitator paid the gas, not our relayer.
    assert w3.eth.get_transaction_count(relayer.address) == our_relayer_nonce


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/misbehave/other-payee/pro", "payTo"),
        ("/misbehave/overpriced/pro", "amount 50000000, the subscription pays at most 5000000"),
    ],
)
def test_requirements_that_do_not_match_are_refused_unsigned(
    paid_service: Callable[..., PaidService],
    funded_wallet: Any,
    token_address: str,
    start_worker: Any,
    path: str,
    reason: str,
) -> None:
    service = paid_service()
    subscription = _subscription(funded_wallet, token_address, service, path)
    start_worker(extra_env=WORKER_ENV)

    job = payment_trigger(subscription=subscription)
    wait_for(lambda: _done(job), timeout=60)

    assert (job.status, job.error_code, job.attempts_made) == ("failed", "requirements_mismatch", 1)
    assert reason in job.error
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.authorization_nonce == ""  # nothing was signed
    assert token_balance(token_address, subscription.payer_address) == FUNDS


def test_a_service_that_answers_200_without_settling_is_never_recorded_as_paid(
    paid_service: Callable[..., PaidService],
    funded_wallet: Any,
    token_address: str,
    start_worker: Any,
    w3: Web3,
) -> None:
    service = paid_service()
    subscription = _subscription(funded_wallet, token_address, service, "/misbehave/no-settle/pro")
    start_worker(extra_env=WORKER_ENV)

    job = payment_trigger(subscription=subscription)
    wait_for(lambda: _done(job), timeout=60)

    assert (job.status, job.error_code) == ("failed", "service_not_settled")
    assert job.attempts_made == 3  # retried with the same nonce, then given up
    assert Payment.objects.get(pk=job.payment_id).status == Payment.Status.FAILED
    assert token_balance(token_address, subscription.payer_address) == FUNDS
    assert _uses(w3, token_address, subscription.payer_address) == 0


def test_a_service_that_settles_then_times_out_is_recorded_once(
    paid_service: Callable[..., PaidService],
    funded_wallet: Any,
    token_address: str,
    start_worker: Any,
    w3: Web3,
) -> None:
    service = paid_service(slow_seconds=4.0)
    subscription = _subscription(funded_wallet, token_address, service, "/misbehave/slow/pro")
    start_worker(extra_env={**WORKER_ENV, "AUTOPAY_RESOURCE_TIMEOUT_SECONDS": "1.5"})

    job = payment_trigger(subscription=subscription)
    wait_for(lambda: _done(job), timeout=60)

    assert job.status == Job.Status.COMPLETED, (job.error_code, job.error)
    assert job.attempts_made == 2  # the timeout, then the chain showed the settlement
    assert job.result is not None and job.result["reconciled"] is True
    assert token_balance(token_address, subscription.payer_address) == FUNDS - PRICE_ATOMIC
    assert _uses(w3, token_address, subscription.payer_address) == 1


def test_worker_killed_after_the_service_settled_charges_once_and_records_it(
    paid_service: Callable[..., PaidService],
    funded_wallet: Any,
    token_address: str,
    start_worker: Any,
    w3: Web3,
) -> None:
    service = paid_service(slow_seconds=30.0)
    subscription = _subscription(funded_wallet, token_address, service, "/misbehave/slow/pro")
    env = {**WORKER_ENV, "AUTOPAY_JOB_LEASE_SECONDS": "3"}
    first = start_worker(extra_env=env)

    job = payment_trigger(subscription=subscription)
    # The service has settled on chain and holds the answer back; the worker still waits.
    wait_for(lambda: _uses(w3, token_address, subscription.payer_address) == 1, timeout=60)
    first.kill()
    job.refresh_from_db()
    assert job.status == Job.Status.ACTIVE
    assert Payment.objects.get(pk=job.payment_id).status != Payment.Status.COMPLETED

    # The new worker's dispatcher takes the job back once the dead worker's lease expires.
    start_worker(extra_env=env)
    wait_for(lambda: _done(job), timeout=60)
    assert job.recoveries == 1

    assert job.status == Job.Status.COMPLETED, (job.error_code, job.error)
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    assert token_balance(token_address, subscription.payer_address) == FUNDS - PRICE_ATOMIC
    assert _uses(w3, token_address, subscription.payer_address) == 1
