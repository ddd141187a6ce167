"""The relayer against a live anvil and Redis: nonce gaps heal, lock contention is transient,
and failures inside the SDK's settle keep their real classification."""

from __future__ import annotations

from typing import Any

import pytest

from autopay import engine
from autopay.chain.relayer import get_relayer
from jobs.models import Job
from subscriptions import services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


def test_a_nonce_gap_left_by_dropped_transactions_heals(
    engine_settings: Any,
    paying_subscription: Any,
    w3: Any,
    clean_redis: Any,
) -> None:
    relayer = get_relayer()
    pending = w3.eth.get_transaction_count(relayer.address, "pending")
    # Three sends the chain never kept (evicted from the mempool): the stored next nonce is
    # ahead of anything the node knows.
    clean_redis.set(relayer._nonce_key, pending + 3)
    subscription = paying_subscription(amount="1", balance_atomic=10 * 10**6)
    job = services.payment_trigger(subscription=subscription)

    outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")

    assert outcome.status == "completed"
    assert w3.eth.get_transaction_count(relayer.address, "latest") == pending + 1


def test_relayer_lock_contention_is_transient_not_a_failure(
    engine_settings: Any, paying_subscription: Any, clean_redis: Any
) -> None:
    engine_settings.RELAYER_LOCK_TIMEOUT_SECONDS = 0.2
    from autopay.chain import relayer as relayer_module

    relayer_module._relayers.clear()
    relayer = get_relayer()
    subscription = paying_subscription(amount="1", balance_atomic=10 * 10**6)
    job = services.payment_trigger(subscription=subscription)
    held = clean_redis.lock(relayer._lock_key, timeout=30)
    assert held.acquire(blocking=False)
    try:
        outcome = engine.process_job(job_id=str(job.pk), worker_id="test-worker")
    finally:
        held.release()

    job.refresh_from_db()
    assert outcome.status == "delayed", job.error
    assert job.status == Job.Status.DELAYED
    assert job.error_code == "relayer_nonce_conflict"
    assert job.payment.status != "failed"
