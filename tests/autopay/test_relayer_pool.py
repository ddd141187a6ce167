"""The relayer pool (RELAYER_PRIVATE_KEYS) against a live anvil and Redis: keys take turns,
each with its own nonce lock and counter, batches go out from several relayers, and the
relayers' ETH balances show in /health (503 below RELAYER_MIN_BALANCE_ETH) and /metrics."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from eth_account import Account
from prometheus_client.parser import text_string_to_metric_families
from web3 import Web3

from autopay import funding
from autopay.chain import relayer as relayer_module
from autopay.chain.relayer import get_relayer
from autopay.devtools.anvil import ANVIL_DEV_KEYS
from subscriptions.models import Payment
from tests.batching import confirm, scheduled_jobs, settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]

POOL = ANVIL_DEV_KEYS[2:5]


@pytest.fixture
def pool(engine_settings: Any) -> list[str]:
    engine_settings.RELAYER_PRIVATE_KEYS = POOL
    relayer_module._relayers.clear()
    funding._cache.clear()
    return [str(Account.from_key(key).address) for key in POOL]


def test_pool_keys_take_turns_each_with_its_own_lock_and_counter(pool: list[str]) -> None:
    relayers = [get_relayer() for _ in range(6)]

    assert {relayer.address for relayer in relayers} == set(pool)
    assert [relayer.address for relayer in relayers[:3]] == [r.address for r in relayers[3:]]
    assert len({relayer._lock_key for relayer in relayers}) == 3
    assert len({relayer._nonce_key for relayer in relayers}) == 3


def test_batches_go_out_from_several_relayers(
    pool: list[str], user: Any, w3: Web3, token_address: str, deployer: Any, engine_settings: Any
) -> None:
    engine_settings.AUTOPAY_SETTLEMENT_BATCH_SIZE = 5
    _payers, job_ids = scheduled_jobs(user, w3, token_address, deployer, count=15, wallets=1)

    sent = [
        transaction
        for start in range(0, 15, 5)
        for transaction in settle(job_ids[start : start + 5], worker_id=f"w{start}")
    ]
    assert [confirm(transaction).completed for transaction in sent] == [5, 5, 5]

    senders = {w3.eth.get_transaction(t.transaction_hash)["from"] for t in sent}  # type: ignore[arg-type]
    assert senders == set(pool), "three batches, three relayers"
    assert set(Payment.objects.values_list("status", flat=True)) == {Payment.Status.COMPLETED}


def test_health_shows_relayer_balances_and_fails_below_the_minimum(
    pool: list[str], client: Client, engine_settings: Any
) -> None:
    healthy = client.get("/health")
    assert healthy.status_code == 200, healthy.content
    relayers = healthy.json()["relayers"]
    assert relayers["status"] == "ok"
    assert relayers["minimumEth"] == "0.01"
    assert [entry["address"] for entry in relayers["balances"]] == pool
    assert all(Decimal(entry["balanceEth"]) > 100 for entry in relayers["balances"])

    # A new key in the pool, never funded: it could not pay for gas.
    empty = Account.create()
    engine_settings.RELAYER_PRIVATE_KEYS = [*POOL, "0x" + bytes(empty.key).hex()]
    funding._cache.clear()
    unfunded = client.get("/health")
    assert unfunded.status_code == 503
    body = unfunded.json()
    assert body["status"] == "unhealthy"
    assert body["relayers"]["status"] == "low"
    assert {"address": empty.address, "balanceEth": "0"} in body["relayers"]["balances"]
    assert "0x" + bytes(empty.key).hex() not in unfunded.content.decode(), "never a key"
    # Payments are not ready, but the API stays in its load balancer: liveness is unaffected.
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert ready.json()["relayers"]["status"] == "low"
    live = client.get("/health/live")
    assert live.status_code == 200, live.content
    assert live.json()["status"] == "healthy"


def test_health_stays_up_when_the_chain_does_not_answer(
    pool: list[str], client: Client, engine_settings: Any
) -> None:
    engine_settings.CHAIN_RPC_URL = "http://127.0.0.1:1"
    response = client.get("/health")

    assert response.status_code == 200, response.content
    relayers = response.json()["relayers"]
    assert relayers["status"] == "unknown"
    assert {entry["balanceEth"] for entry in relayers["balances"]} == {None}


def test_metrics_expose_relayer_balances(
    pool: list[str], client: Client, engine_settings: Any
) -> None:
    engine_settings.METRICS_PUBLIC = True
    response = client.get("/metrics")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
    for address in pool:
        assert samples[("autopay_relayer_balance_eth", (("relayer", address),))] > 100
    assert samples[("autopay_relayer_min_balance_eth", ())] == 0.01


def test_an_invalid_key_in_the_pool_is_named_in_health(
    pool: list[str], client: Client, engine_settings: Any
) -> None:
    engine_settings.RELAYER_PRIVATE_KEYS = [POOL[0], "0x1234"]

    body = client.get("/health").json()

    assert body["payments"] == "misconfigured"
    assert (
        "relayer: RELAYER_PRIVATE_KEYS (key 2) is not a valid private key"
        in body["paymentsProblems"]
    )
