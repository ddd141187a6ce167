"""The remote-facilitator path (X402_FACILITATOR_URL): the SDK's HTTP facilitator client
talking to a facilitator service over real HTTP.

The service itself is a boundary we do not own and cannot run here (Coinbase's or another
operator's facilitator), so the test serves one of its own: a small HTTP server that answers
/verify and /settle with the x402 SDK's exact-EVM facilitator and our relayer, settling on the
live anvil. Everything on our side of the wire is the production code.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from x402.schemas import PaymentPayload, PaymentRequirements

from autopay import engine
from autopay.chain.client import token_balance
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.models import Payment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


class _Facilitator:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail_with: int | None = None
        self.auth_headers: list[str | None] = []


@pytest.fixture
def remote_facilitator(engine_settings: Any) -> Iterator[tuple[str, _Facilitator]]:
    from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme
    from x402.mechanisms.evm.exact.facilitator import ExactEvmSchemeConfig

    from autopay.chain.relayer import get_relayer

    scheme = ExactEvmFacilitatorScheme(get_relayer(), ExactEvmSchemeConfig())
    state = _Facilitator()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append((self.path, body))
            state.auth_headers.append(self.headers.get("Authorization"))
            if state.fail_with:
                self.send_response(state.fail_with)
                self.end_headers()
                self.wfile.write(b"facilitator overloaded")
                return
            payload = PaymentPayload.model_validate(body["paymentPayload"])
            requirements = PaymentRequirements.model_validate(body["paymentRequirements"])
            method = scheme.verify if self.path.endswith("/verify") else scheme.settle
            answer = method(payload, requirements).model_dump(by_alias=True, exclude_none=True)
            raw = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    engine_settings.X402_FACILITATOR_URL = url
    engine_settings.X402_FACILITATOR_AUTH_HEADER = "Bearer facilitator-test-token"
    try:
        yield url, state
    finally:
        server.shutdown()
        server.server_close()


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
    assert set(state.auth_headers) == {"Bearer facilitator-test-token"}
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
