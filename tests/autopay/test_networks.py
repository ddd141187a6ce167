"""Several networks in one deployment: two anvil chains with different chain ids (and a third
network whose RPC never answers), one worker paying subscriptions on all of them, each
through its own chain, token and relayer; RPC URL fallback; an unreachable network delays
only its own jobs; /health and /metrics report per network."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from django.test import Client
from eth_account import Account
from rest_framework.test import APIClient
from web3 import Web3

from autopay.authorizations import period_nonce
from autopay.chain.client import token_balance
from autopay.devtools.anvil import ANVIL_DEV_KEYS, AnvilProcess, free_port
from autopay.devtools.contracts import deploy_token, mint
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.models import Payment, Subscription
from tests.conftest import wait_for
from tests.factories import PayerWalletFactory, SubscriptionFactory, new_address

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain, pytest.mark.worker]

SECOND = "eip155:31338"
DEAD = "eip155:31339"


@pytest.fixture(scope="module")
def second_chain() -> Iterator[tuple[AnvilProcess, str]]:
    """A second anvil, chain id 31338, with its own token."""
    node = AnvilProcess(port=free_port(), chain_id=31338).start()
    try:
        w3 = Web3(Web3.HTTPProvider(node.rpc_url, request_kwargs={"timeout": 30}))
        yield node, deploy_token(w3, ANVIL_DEV_KEYS[0])
    finally:
        node.stop()


@pytest.fixture
def networks(
    anvil: Any, token_address: str, second_chain: tuple[AnvilProcess, str], engine_settings: Any
) -> list[dict[str, Any]]:
    node, second_token = second_chain
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    registry = [
        {
            "network": "eip155:31337",
            "rpc_urls": [anvil.rpc_url],
            "token_address": token_address,
            "relayer_private_key": ANVIL_DEV_KEYS[1],
        },
        {
            # The first URL is down: the engine falls back to the second.
            "network": SECOND,
            "rpc_urls": [dead_url, node.rpc_url],
            "token_address": second_token,
            "relayer_private_key": ANVIL_DEV_KEYS[4],
            "token_name": "USD Coin",
            "token_version": "2",
        },
        {
            "network": DEAD,
            "rpc_urls": [dead_url],
            "token_address": new_address(),
            "relayer_private_key": ANVIL_DEV_KEYS[4],
        },
    ]
    engine_settings.AUTOPAY_NETWORKS = registry
    return registry


def _done(job: Job) -> Job | None:
    job.refresh_from_db()
    return job if job.status in (Job.Status.COMPLETED, Job.Status.FAILED) else None


def test_one_worker_pays_on_every_network_each_through_its_own_chain(
    networks: list[dict[str, Any]],
    second_chain: tuple[AnvilProcess, str],
    token_address: str,
    w3: Web3,
    user: Any,
    api: APIClient,
    start_worker: Any,
) -> None:
    node, second_token = second_chain
    w3_second = Web3(Web3.HTTPProvider(node.rpc_url))
    # One server-held wallet, funded on both chains.
    wallet = PayerWalletFactory.create(owner=user)
    mint(w3, token_address, ANVIL_DEV_KEYS[0], str(wallet.address), 50 * 10**6)
    mint(w3_second, second_token, ANVIL_DEV_KEYS[0], str(wallet.address), 50 * 10**6)

    def subscription(network: str, token: str, amount: str) -> Any:
        return SubscriptionFactory.create(
            owner=user,
            wallet=wallet,
            payer_address=wallet.address,
            token_address=token,
            network=network,
            amount=Decimal(amount),
        )

    first = subscription("eip155:31337", token_address, "3")
    second = subscription(SECOND, second_token, "4")
    unreachable = subscription(DEAD, networks[2]["token_address"], "5")

    # A pre-signed subscription on the second network: its typed data is that chain's.
    payer = Account.create()
    mint(w3_second, second_token, ANVIL_DEV_KEYS[0], payer.address, 10 * 10**6)
    response = api.post(
        "/api/subscriptions/",
        {
            "service_name": "second-network pre-signed",
            "mode": "presigned",
            "payer_address": payer.address,
            "recipient_address": new_address(),
            "amount": "2",
            "network": SECOND,
            "interval_unit": "hour",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.data["token_address"] == second_token
    presigned_id = response.data["id"]
    periods = json.loads(
        api.get(f"/api/subscriptions/{presigned_id}/authorizations/unsigned").content
    )["periods"]
    data = periods[0]["typed_data"]
    assert data["domain"]["chainId"] == 31338
    assert data["domain"]["verifyingContract"] == second_token
    signature = "0x" + bytes(Account.sign_typed_data(payer.key, full_message=data).signature).hex()
    upload = api.post(
        f"/api/subscriptions/{presigned_id}/authorizations",
        {"authorizations": [{"period_index": 0, "typed_data": data, "signature": signature}]},
        format="json",
    )
    assert upload.status_code == 201, upload.content

    start_worker(extra_env={"AUTOPAY_NETWORKS": json.dumps(networks)})
    jobs = {
        name: payment_trigger(subscription=target)
        for name, target in [
            ("first", first),
            ("second", second),
            ("unreachable", unreachable),
            ("presigned", Subscription.objects.get(pk=presigned_id)),
        ]
    }
    for name in ("first", "second", "presigned"):
        job = jobs[name]
        wait_for(partial(_done, job), timeout=90)
        assert job.status == Job.Status.COMPLETED, (name, job.error)

    # Each paid on its own chain, from the same address.
    assert token_balance(token_address, str(wallet.address), w3=w3) == 47 * 10**6
    assert token_balance(second_token, str(wallet.address), w3=w3_second) == 46 * 10**6
    assert token_balance(second_token, payer.address, w3=w3_second) == 8 * 10**6
    # The second network's first RPC URL is down: the first attempt there waited out
    # rpc_unavailable (no attempt spent) and every later call used its next URL.
    assert jobs["second"].attempts_made + jobs["presigned"].attempts_made == 2
    waited = [
        attempt.error_code
        for job in (jobs["second"], jobs["presigned"])
        for attempt in job.attempts.filter(outcome="waiting")
    ]
    assert waited == ["rpc_unavailable"]
    presigned_payment = Payment.objects.get(pk=jobs["presigned"].payment_id)
    assert presigned_payment.authorization_nonce == period_nonce(
        network=SECOND,
        subscription_id=presigned_id,
        payer=payer.address,
        token_address=second_token,
        period_start=presigned_payment.period_start,
    )

    # The unreachable network delays only its own job: retried, never another network's.
    dead_job = jobs["unreachable"]
    dead_job.refresh_from_db()
    assert dead_job.status in (Job.Status.DELAYED, Job.Status.ACTIVE, Job.Status.FAILED)
    assert dead_job.error_code == "rpc_unavailable"
    assert token_balance(token_address, str(wallet.address), w3=w3) == 47 * 10**6

    health = Client().get("/health").json()
    assert health["networks"]["eip155:31337"]["rpc"] == "connected"
    assert health["networks"][SECOND]["rpc"] == "connected"  # through its second URL
    assert health["networks"][SECOND]["chainId"] == 31338
    assert health["networks"][DEAD]["rpc"] == "unreachable"


def test_metrics_report_per_network(networks: list[dict[str, Any]], settings: Any) -> None:
    settings.METRICS_PUBLIC = True
    text = Client().get("/metrics").content.decode()
    assert 'autopay_network_up{network="eip155:31337"} 1.0' in text
    assert f'autopay_network_up{{network="{SECOND}"}} 1.0' in text
    assert f'autopay_network_up{{network="{DEAD}"}} 0.0' in text


def test_wallet_balance_on_each_network(
    networks: list[dict[str, Any]],
    second_chain: tuple[AnvilProcess, str],
    token_address: str,
    w3: Web3,
    user: Any,
    api: APIClient,
) -> None:
    """``?network=`` reads the balance on that network's chain and token; an unknown network is
    a 400 naming the valid ones; an unreachable one a 503 with the reason, never a 500."""
    node, second_token = second_chain
    wallet = PayerWalletFactory.create(owner=user)
    mint(w3, token_address, ANVIL_DEV_KEYS[0], str(wallet.address), 3 * 10**6)
    mint(Web3(Web3.HTTPProvider(node.rpc_url)), second_token, ANVIL_DEV_KEYS[0], wallet.address, 7)
    url = f"/api/wallets/{wallet.pk}/balance/"

    default = api.get(url)
    assert default.status_code == 200, default.content
    assert (default.json()["network"], default.json()["balance"]) == ("eip155:31337", "3")

    second = api.get(url, {"network": SECOND})
    assert second.status_code == 200, second.content
    assert second.json()["token"] == second_token
    assert (second.json()["balance"], second.json()["balanceAtomic"]) == ("0.000007", "7")

    unknown = api.get(url, {"network": "eip155:999"})
    assert unknown.status_code == 400, unknown.content
    assert unknown.json()["success"] is False
    message = unknown.json()["details"]["network"][0]
    assert "eip155:999" in message
    assert all(entry["network"] in message for entry in networks)

    dead = api.get(url, {"network": DEAD})
    assert dead.status_code == 503, dead.content
    assert dead.json()["success"] is False
    assert f"RPC of network {DEAD} is unreachable" in dead.json()["error"]


def test_wallet_balance_answers_503_when_the_token_has_no_contract(
    engine_settings: Any, user: Any, api: APIClient
) -> None:
    """A TOKEN_ADDRESS with no contract on the chain is the operator's configuration: 503 with
    the reason, where it was a 500."""
    missing = new_address()
    engine_settings.TOKEN_ADDRESS = missing
    wallet = PayerWalletFactory.create(owner=user)

    response = api.get(f"/api/wallets/{wallet.pk}/balance")

    assert response.status_code == 503, response.content
    body = response.json()
    assert body["success"] is False
    assert missing in body["error"]
    assert "no token contract" in body["error"]
