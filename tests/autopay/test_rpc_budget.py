"""The RPC budget per network, against a live anvil behind a counting proxy and a real Redis:
every request the engine sends is counted by method (for /metrics and the benchmarks), and
under ``max_rpc_per_second`` all workers together keep to it, a request that would wait too
long being a transient fault (the job waits it out)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.test import Client

from autopay import engine
from autopay.chain import client as chain
from jobs.models import Job
from jobs.services import payment_trigger
from tests.infra import RpcProxy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


@pytest.fixture
def budget(rpc: RpcProxy, engine_settings: Any) -> Any:
    """The default network's budget, set per test; each thread builds its web3 anew."""

    def set_budget(per_second: float) -> None:
        engine_settings.CHAIN_MAX_RPC_PER_SECOND = per_second
        chain._local.__dict__.clear()

    return set_budget


def _calls(network: str = "eip155:31337") -> dict[str, int]:
    raw = chain.get_redis().hgetall(chain.rpc_calls_key(network))
    return {method.decode(): int(count) for method, count in raw.items()}


def test_every_request_of_a_payment_is_counted_by_method(
    budget: Any, rpc: RpcProxy, paying_subscription: Any, engine_settings: Any
) -> None:
    budget(0)  # no limit: counted only
    subscription = paying_subscription(amount="1")
    job = payment_trigger(subscription=subscription)
    chain.get_redis().delete(chain.rpc_calls_key("eip155:31337"))
    rpc.calls.clear()

    assert engine.process_job(job_id=str(job.pk), worker_id="w").status == "completed"

    counted = _calls()
    # What the provider saw is what was counted (the proxy is the provider here).
    assert counted == {method: count for method, count in rpc.calls.items() if count}
    assert counted["eth_sendRawTransaction"] == 1
    engine_settings.METRICS_PUBLIC = True
    text = Client().get("/metrics").content.decode()
    assert (
        'autopay_rpc_requests_total{method="eth_sendRawTransaction",network="eip155:31337"} 1.0'
        in text
    )


def test_all_workers_together_keep_to_the_budget(budget: Any, rpc: RpcProxy) -> None:
    budget(10)  # 10 requests a second, a burst of 10
    rpc.calls.clear()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(15):
                chain.block_number()
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    assert not errors
    assert rpc.calls["eth_blockNumber"] == 30
    # 30 requests: a burst of 10 at once, the other 20 at 10 a second.
    assert elapsed >= 1.8, f"30 requests in {elapsed:.2f}s: over the budget"


def test_a_request_the_budget_cannot_allow_in_time_is_a_fault_the_job_waits_out(
    budget: Any, rpc: RpcProxy, paying_subscription: Any, engine_settings: Any
) -> None:
    subscription = paying_subscription(amount="1")
    job = payment_trigger(subscription=subscription)
    budget(0.2)  # one request every 5 s, more than a request may wait
    engine_settings.CHAIN_RPC_TIMEOUT_SECONDS = 0.5
    chain.block_number()  # spends the burst

    with pytest.raises(chain.ChainUnavailable, match="RPC budget"):
        chain.block_number()
    assert engine.process_job(job_id=str(job.pk), worker_id="w").status == "delayed"
    job.refresh_from_db()
    assert (job.status, job.error_code, job.attempts_made) == (
        Job.Status.DELAYED,
        "rpc_unavailable",
        0,
    )
    assert "RPC budget" in job.error
