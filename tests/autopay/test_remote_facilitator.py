"""The remote-facilitator path (X402_FACILITATOR_URL): the SDK's HTTP facilitator client
talking to a facilitator service over real HTTP.

The service itself is a boundary we do not own and cannot run here (Coinbase's or another
operator's facilitator), so the test serves one of its own: a small HTTP server that answers
/verify and /settle with the x402 SDK's exact-EVM facilitator and the SDK's bundled signer
(its own gas-paying key, bearer-token auth), settling on the live anvil. The signer settles
without simulating, as the SDK does by default, so a second settle of a used authorization is
broadcast and reverts: the chain audit sees every settle the engine caused. Misbehaviour is
injected per /settle request (slow, settle then answer badly, answer without settling, close
the connection). Everything on our side of the wire is the production code.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import Client
from web3 import Web3
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme
from x402.mechanisms.evm.exact.facilitator import ExactEvmSchemeConfig
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from autopay import engine
from autopay.chain.abi import TRANSFER_TOPIC
from autopay.chain.client import token_balance
from autopay.devtools.anvil import ANVIL_DEV_KEYS
from autopay.reconcile import payments_reconcile
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.models import Payment, Subscription
from tests.conftest import WorkerProcess, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]

TOKEN = "Bearer facilitator-test-token"
# The stand-in facilitator's own gas-paying key (anvil dev account 7), apart from our relayer.
FACILITATOR_KEY = ANVIL_DEV_KEYS[7]


@dataclass(frozen=True)
class Misbehaviour:
    """What the stand-in does with one /settle request instead of answering it plainly."""

    wait_before: float = 0.0  # seconds before it starts (a slow facilitator)
    settle: bool = True  # settle on chain at all
    wait_after: float = 0.0  # seconds between settling and answering
    status: int = 200  # the answer's status
    body: bytes | None = None  # the answer's body (None: its settle response as JSON)
    close: bool = False  # close the connection instead of answering


class _Facilitator:
    def __init__(self, signer: FacilitatorWeb3Signer) -> None:
        self.signer = signer
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail_with: int | None = None
        self.auth_headers: list[str | None] = []
        self.settle_script: list[Misbehaviour] = []
        self.settled: list[SettleResponse] = []
        self.lock = threading.Lock()

    def settle_requests(self) -> int:
        return sum(1 for path, _ in self.requests if path.endswith("/settle"))


@pytest.fixture
def remote_facilitator(engine_settings: Any) -> Iterator[tuple[str, _Facilitator]]:
    signer = FacilitatorWeb3Signer(FACILITATOR_KEY, engine_settings.CHAIN_RPC_URL)
    scheme = ExactEvmFacilitatorScheme(signer, ExactEvmSchemeConfig())
    state = _Facilitator(signer)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            settling = self.path.endswith("/settle")
            with state.lock:
                state.requests.append((self.path, body))
                state.auth_headers.append(self.headers.get("Authorization"))
                script = state.settle_script
                misbehaviour = script.pop(0) if settling and script else Misbehaviour()
            if self.headers.get("Authorization") != TOKEN:
                self._answer(401, b'{"error":"unauthorized"}')
                return
            if state.fail_with:
                self._answer(state.fail_with, b"facilitator overloaded")
                return
            time.sleep(misbehaviour.wait_before)
            payload = PaymentPayload.model_validate(body["paymentPayload"])
            requirements = PaymentRequirements.model_validate(body["paymentRequirements"])
            if not settling:
                answer: Any = scheme.verify(payload, requirements)
            elif misbehaviour.settle:
                answer = scheme.settle(payload, requirements)
                state.settled.append(answer)
            else:
                answer = SettleResponse(
                    success=False,
                    error_reason="not_settled",
                    transaction="",
                    network="eip155:31337",
                )
            time.sleep(misbehaviour.wait_after)
            if misbehaviour.close:
                self.close_connection = True
                return
            raw = misbehaviour.body
            if raw is None:
                raw = json.dumps(answer.model_dump(by_alias=True, exclude_none=True)).encode()
            self._answer(misbehaviour.status, raw)

        def _answer(self, status: int, raw: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:
                return  # the engine gave up waiting: the answer is lost, as in production

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    engine_settings.X402_FACILITATOR_URL = url
    engine_settings.X402_FACILITATOR_AUTH_HEADER = TOKEN
    try:
        yield url, state
    finally:
        server.shutdown()
        server.server_close()


def _process(job: Job) -> engine.Outcome:
    return engine.process_job(job_id=str(job.pk), worker_id="remote-test")


def _run(job: Job, *, timeout: float = 30.0) -> list[str]:
    """Process the job as a worker would: each delayed outcome is tried again when due."""
    outcomes: list[str] = []
    give_up = time.monotonic() + timeout
    while True:
        outcome = _process(job)
        outcomes.append(outcome.status)
        if outcome.retry_in is None:
            return outcomes
        assert time.monotonic() < give_up, f"job still running after {timeout}s: {outcomes}"
        time.sleep(outcome.retry_in)


def _audit(
    w3: Web3,
    state: _Facilitator,
    *,
    since_block: int,
    token_address: str,
    payments: list[Payment],
) -> None:
    """On chain: no settle of the facilitator reverted (no gas burned on a replay); a completed
    payment moved its money exactly once, in the transaction it records; any other moved none."""
    facilitator = state.signer.address.lower()
    for number in range(since_block + 1, w3.eth.block_number + 1):
        transactions: list[Any] = list(
            w3.eth.get_block(number, full_transactions=True)["transactions"]
        )
        for tx in transactions:
            if str(tx["from"]).lower() == facilitator:
                receipt = w3.eth.get_transaction_receipt(tx["hash"])
                assert receipt["status"] == 1, f"facilitator settle {tx['hash'].hex()} reverted"
    for payment in payments:
        payment.refresh_from_db()
        transfers = w3.eth.get_logs(
            {
                "address": Web3.to_checksum_address(token_address),
                "fromBlock": since_block + 1,
                "toBlock": "latest",
                "topics": [
                    TRANSFER_TOPIC,
                    "0x" + "0" * 24 + payment.payer_address[2:].lower(),
                    "0x" + "0" * 24 + payment.recipient_address[2:].lower(),
                ],
            }
        )
        if payment.status == Payment.Status.COMPLETED:
            assert len(transfers) == 1, f"payment {payment.pk}: {len(transfers)} transfers"
            assert "0x" + transfers[0]["transactionHash"].hex().removeprefix("0x") == (
                payment.transaction_hash
            )
        else:
            assert transfers == [], f"payment {payment.pk} is {payment.status} but money moved"


@pytest.fixture
def chain_head(w3: Web3) -> int:
    return int(w3.eth.block_number)


def test_payment_settles_through_a_remote_facilitator(
    remote_facilitator: Any, paying_subscription: Any, token_address: str
) -> None:
    _, state = remote_facilitator
    subscription = paying_subscription(amount="2.5", balance_atomic=20 * 10**6)
    job = payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "completed"
    job.refresh_from_db()
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    assert payment.block_number is not None
    assert job.result is not None
    assert job.result["transactionHash"] == payment.transaction_hash
    assert [path for path, _ in state.requests] == ["/verify", "/settle"]
    assert set(state.auth_headers) == {TOKEN}
    sent = state.requests[1][1]
    assert sent["paymentRequirements"]["amount"] == "2500000"
    assert (
        sent["paymentPayload"]["payload"]["authorization"]["nonce"] == payment.authorization_nonce
    )
    assert token_balance(token_address, subscription.recipient_address) == 2_500_000


def test_facilitator_5xx_is_transient(
    remote_facilitator: Any, paying_subscription: Any, token_address: str
) -> None:
    _, state = remote_facilitator
    state.fail_with = 503
    subscription = paying_subscription(amount="1", balance_atomic=20 * 10**6)
    job = payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    job.refresh_from_db()
    assert outcome.status == "delayed"
    assert job.status == Job.Status.DELAYED
    assert job.error_code == "facilitator_unavailable"
    assert token_balance(token_address, subscription.recipient_address) == 0


@pytest.mark.parametrize(
    "misbehaviour",
    [
        pytest.param(Misbehaviour(status=409, body=b'{"error":"conflict"}'), id="settle-then-409"),
        pytest.param(
            Misbehaviour(body=b"<html><body>502 Bad Gateway</body></html>"), id="settle-then-html"
        ),
        pytest.param(Misbehaviour(status=500, body=b"internal error"), id="settle-then-500"),
        pytest.param(Misbehaviour(close=True), id="settle-then-close"),
        pytest.param(Misbehaviour(wait_after=1.5), id="settle-then-timeout"),
    ],
)
def test_a_settle_whose_answer_is_lost_or_garbled_is_recorded_from_the_chain(
    remote_facilitator: Any,
    engine_settings: Any,
    paying_subscription: Callable[..., Subscription],
    token_address: str,
    w3: Web3,
    chain_head: int,
    misbehaviour: Misbehaviour,
) -> None:
    """The money moved: the same attempt finds it by the derived nonce and records it."""
    _, state = remote_facilitator
    engine_settings.X402_FACILITATOR_TIMEOUT_SECONDS = 0.5
    state.settle_script = [misbehaviour]
    subscription = paying_subscription(amount="3")
    job = payment_trigger(subscription=subscription)

    assert _run(job) == ["completed"]

    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    assert [answer.transaction for answer in state.settled] == [payment.transaction_hash]
    job.refresh_from_db()
    assert (job.status, job.attempts_made, job.error_code) == (Job.Status.COMPLETED, 1, "")
    assert job.result is not None and job.result["reconciled"] is True
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    assert state.settle_requests() == 1
    _audit(w3, state, since_block=chain_head, token_address=token_address, payments=[payment])


def test_an_answer_that_settles_nothing_waits_out_the_deadline_then_settles_once(
    remote_facilitator: Any,
    engine_settings: Any,
    paying_subscription: Callable[..., Subscription],
    token_address: str,
    w3: Web3,
    chain_head: int,
) -> None:
    """A 409 that is no stated refusal: nothing moved, but nothing says so. The payment stays
    in flight, the job asks the chain without using attempts, and settles again only after the
    first settle's deadline."""
    _, state = remote_facilitator
    engine_settings.X402_FACILITATOR_SETTLE_DEADLINE_SECONDS = 2.0
    engine_settings.AUTOPAY_RETRY_BACKOFF_SECONDS = 0.3
    state.settle_script = [Misbehaviour(settle=False, status=409, body=b"busy")]
    subscription = paying_subscription(amount="4")
    job = payment_trigger(subscription=subscription)

    first = _process(job)

    assert first.status == "delayed"
    job.refresh_from_db()
    payment = Payment.objects.get(pk=job.payment_id)
    assert (job.error_code, job.attempts_made) == ("settlement_unconfirmed", 1)
    assert payment.status == Payment.Status.SUBMITTED
    assert payment.submitted_at is not None
    sent_at = payment.submitted_at

    started = time.monotonic()
    outcomes = _run(job)

    assert outcomes[-1] == "completed"
    assert time.monotonic() - started >= 1.0  # the rest of the 2 s deadline was waited out
    assert state.settle_requests() == 2
    job.refresh_from_db()
    assert (job.status, job.attempts_made) == (Job.Status.COMPLETED, 2)
    payment.refresh_from_db()
    assert payment.submitted_at is not None and payment.submitted_at > sent_at
    _audit(w3, state, since_block=chain_head, token_address=token_address, payments=[payment])


def test_a_stated_refusal_fails_the_payment_with_its_reason(
    remote_facilitator: Any,
    paying_subscription: Callable[..., Subscription],
    token_address: str,
    w3: Web3,
    chain_head: int,
) -> None:
    """A well-formed settle response with success false and a pre-settlement reason, here
    with a 400, is the facilitator's word that it broadcast nothing: the payment fails."""
    _, state = remote_facilitator
    refusal = SettleResponse(
        success=False,
        error_reason="invalid_exact_evm_insufficient_balance",
        error_message="payer balance too low",
        transaction="",
        network="eip155:31337",
    )
    state.settle_script = [
        Misbehaviour(
            settle=False,
            status=400,
            body=json.dumps(refusal.model_dump(by_alias=True, exclude_none=True)).encode(),
        )
    ]
    subscription = paying_subscription(amount="4")
    job = payment_trigger(subscription=subscription)

    assert _run(job) == ["failed"]

    payment = Payment.objects.get(pk=job.payment_id)
    assert (payment.status, payment.error_code) == (Payment.Status.FAILED, "insufficient_balance")
    assert payment.submitted_at is None  # the facilitator said it sent nothing
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.PAST_DUE
    _audit(w3, state, since_block=chain_head, token_address=token_address, payments=[payment])


def test_a_slow_settle_is_not_sent_twice_by_the_retries_of_a_real_worker(
    remote_facilitator: Any,
    start_worker: Callable[..., WorkerProcess],
    paying_subscription: Callable[..., Subscription],
    token_address: str,
    w3: Web3,
    chain_head: int,
) -> None:
    """The facilitator takes 3 s, the engine waits 0.5 s: its retries ask the chain and wait
    for the first settle's deadline instead of sending another (which would burn gas)."""
    url, state = remote_facilitator
    state.settle_script = [Misbehaviour(wait_before=3.0)]
    start_worker(
        extra_env={
            "X402_FACILITATOR_URL": url,
            "X402_FACILITATOR_AUTH_HEADER": TOKEN,
            "X402_FACILITATOR_TIMEOUT_SECONDS": "0.5",
            "X402_FACILITATOR_SETTLE_DEADLINE_SECONDS": "8",
            "AUTOPAY_RETRY_BACKOFF_SECONDS": "0.5",
        }
    )
    subscription = paying_subscription(amount="6")
    job = payment_trigger(subscription=subscription)

    wait_for(
        lambda: Job.objects.filter(
            pk=job.pk, status__in=[Job.Status.COMPLETED, Job.Status.FAILED]
        ).exists(),
        timeout=30,
    )

    job.refresh_from_db()
    assert job.status == Job.Status.COMPLETED, (job.error_code, job.error)
    # The attempt that sent the settle, and the look at the chain that found it.
    assert job.attempts_made == 2
    assert state.settle_requests() == 1
    time.sleep(1.0)  # a second settle, had one been sent, would land by now
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    assert [answer.transaction for answer in state.settled] == [payment.transaction_hash]
    _audit(w3, state, since_block=chain_head, token_address=token_address, payments=[payment])


def test_recovery_records_a_settle_that_lands_after_the_job_gave_up(
    remote_facilitator: Any,
    engine_settings: Any,
    paying_subscription: Callable[..., Subscription],
    token_address: str,
    w3: Web3,
    chain_head: int,
) -> None:
    """A facilitator slower than the deadline: the job gives up (out of attempts) and leaves
    the payment in flight; recovery waits out the deadline, then fails it as never settled;
    when the settle lands anyway, recovery finds it by the nonce (no hash) and records it."""
    _, state = remote_facilitator
    engine_settings.AUTOPAY_JOB_MAX_ATTEMPTS = 1
    engine_settings.X402_FACILITATOR_TIMEOUT_SECONDS = 0.5
    engine_settings.X402_FACILITATOR_SETTLE_DEADLINE_SECONDS = 1.5
    state.settle_script = [Misbehaviour(wait_before=3.0)]
    subscription = paying_subscription(amount="7")
    job = payment_trigger(subscription=subscription)

    assert _process(job).status == "failed"

    payment = Payment.objects.get(pk=job.payment_id)
    job.refresh_from_db()
    assert job.error_code == "settlement_unconfirmed"
    assert payment.status == Payment.Status.SUBMITTED  # in flight, not failed
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE

    payments_reconcile(older_than_seconds=0)  # before the deadline: left alone
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUBMITTED

    assert payment.submitted_at is not None
    time.sleep(max(payment.submitted_at.timestamp() + 1.6 - time.time(), 0))
    payments_reconcile(older_than_seconds=0)  # past the deadline, nothing on chain yet
    payment.refresh_from_db()
    # Nothing moved and it is not the customer's doing: a new job pays the period again.
    assert (payment.status, payment.transaction_hash) == (Payment.Status.PENDING, "")
    retry = Job.objects.filter(payment=payment).exclude(pk=job.pk).get()
    assert (retry.source, retry.status) == (Job.Source.RETRY, Job.Status.WAITING)

    wait_for(lambda: state.settled, timeout=10)
    # The late settle landed first: the new job's first step asks the chain (the derived
    # nonce) and records it; no second settle is sent.
    assert _process(retry).status == "completed"
    payment.refresh_from_db()
    assert payment.status == Payment.Status.COMPLETED
    assert payment.transaction_hash == state.settled[0].transaction
    assert [path for path, _ in state.requests].count("/settle") == 1
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    _audit(w3, state, since_block=chain_head, token_address=token_address, payments=[payment])


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("every-request", id="wrong-auth-header"),
        pytest.param("settle-only", id="settle-refuses-credentials"),
    ],
)
def test_refused_credentials_are_a_configuration_error_not_the_customers(
    remote_facilitator: Any,
    engine_settings: Any,
    paying_subscription: Callable[..., Subscription],
    token_address: str,
    w3: Web3,
    chain_head: int,
    client: Client,
    where: str,
) -> None:
    """401/403: the job waits (no attempt used), the subscription stays active, /health names
    the facilitator; once fixed, the same job pays once, at once (no deadline to wait out)."""
    _, state = remote_facilitator
    engine_settings.AUTOPAY_CONFIGURATION_RETRY_SECONDS = 0
    engine_settings.X402_FACILITATOR_SETTLE_DEADLINE_SECONDS = 60
    if where == "every-request":
        engine_settings.X402_FACILITATOR_AUTH_HEADER = "Bearer wrong-token"
    else:
        state.settle_script = [Misbehaviour(settle=False, status=403, body=b"forbidden")]
    subscription = paying_subscription(amount="5")
    job = payment_trigger(subscription=subscription)

    assert _process(job).status == "delayed"

    job.refresh_from_db()
    assert (job.status, job.error_code, job.attempts_made) == (
        Job.Status.DELAYED,
        "configuration_error",
        0,
    )
    assert "X402_FACILITATOR_AUTH_HEADER" in job.error
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status not in (Payment.Status.FAILED, Payment.Status.SUBMITTED)
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["payments"] == "misconfigured"
    assert any(problem.startswith("facilitator:") for problem in health.json()["paymentsProblems"])
    assert TOKEN not in health.content.decode()

    engine_settings.X402_FACILITATOR_AUTH_HEADER = TOKEN
    assert _process(job).status == "completed"

    job.refresh_from_db()
    assert (job.status, job.attempts_made) == (Job.Status.COMPLETED, 1)
    assert client.get("/health").json()["payments"] == "ok"
    _audit(
        w3,
        state,
        since_block=chain_head,
        token_address=token_address,
        payments=[Payment.objects.get(pk=job.payment_id)],
    )


def test_real_workers_against_a_facilitator_that_misbehaves_charge_each_period_once(
    remote_facilitator: Any,
    start_worker: Callable[..., WorkerProcess],
    paying_subscription: Callable[..., Subscription],
    token_address: str,
    w3: Web3,
    chain_head: int,
) -> None:
    """Twelve payments through two workers while the facilitator answers most settles badly
    after settling: every one is recorded from the chain, once, and no settle is replayed."""
    url, state = remote_facilitator
    state.settle_script = [
        Misbehaviour(status=409, body=b'{"error":"conflict"}'),
        Misbehaviour(body=b"<html>oops</html>"),
        Misbehaviour(close=True),
        Misbehaviour(),
        Misbehaviour(status=502, body=b"bad gateway"),
        Misbehaviour(wait_after=1.5),
    ] * 2
    start_worker(
        concurrency=2,
        extra_env={
            "X402_FACILITATOR_URL": url,
            "X402_FACILITATOR_AUTH_HEADER": TOKEN,
            "X402_FACILITATOR_TIMEOUT_SECONDS": "0.5",
        },
    )
    jobs = [payment_trigger(subscription=paying_subscription(amount="1.25")) for _ in range(12)]

    wait_for(
        lambda: (
            not Job.objects.filter(
                pk__in=[job.pk for job in jobs], status__in=Job.OPEN_STATUSES
            ).exists()
        ),
        timeout=60,
    )

    finished = Job.objects.filter(pk__in=[job.pk for job in jobs])
    assert {(job.status, job.error_code) for job in finished} == {(Job.Status.COMPLETED, "")}
    payments = list(Payment.objects.filter(jobs__in=finished))
    assert {payment.status for payment in payments} == {Payment.Status.COMPLETED}
    assert state.settle_requests() == 12
    _audit(w3, state, since_block=chain_head, token_address=token_address, payments=payments)
