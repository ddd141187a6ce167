"""Pre-signed (non-custodial) subscriptions, end to end against PostgreSQL, Redis, anvil and a
real Celery worker: the payer's key never reaches the server. The payer reads the typed data of
coming periods from the API, signs it with eth_account (as the README shows), uploads the
signatures (verified before they are stored), and the worker submits them at the due time.
Missing, expired, outdated and on-chain-canceled authorizations fail with their own codes and
never move money."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from eth_account import Account
from eth_account.signers.local import LocalAccount
from rest_framework.test import APIClient
from web3 import Web3

from autopay import engine
from autopay.authorizations import period_nonce
from autopay.chain.client import authorization_used, token_balance
from autopay.devtools.contracts import sign_and_send, token_contract
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.models import PayerWallet, Payment, PresignedAuthorization, Subscription
from tests.conftest import wait_for
from tests.factories import new_address

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]

AMOUNT = "12.5"
AMOUNT_ATOMIC = 12_500_000


def _sign(account: LocalAccount, typed_data: dict[str, Any]) -> str:
    """What a payer does with one period of GET .../authorizations/unsigned."""
    signed = Account.sign_typed_data(account.key, full_message=typed_data)
    return "0x" + bytes(signed.signature).hex()


@pytest.fixture
def payer(funded_account: Callable[..., LocalAccount]) -> LocalAccount:
    """The payer: tokens, no ETH, a key only this test (the payer's side) holds."""
    return funded_account(100 * 10**6)


@pytest.fixture
def presigned(api: APIClient, engine_settings: Any, token_address: str) -> Callable[..., int]:
    """Create a pre-signed subscription through the API; returns its id."""

    def create(payer: str, **fields: Any) -> int:
        body = {
            "service_name": "Pro (pre-signed)",
            "mode": "presigned",
            "payer_address": payer,
            "recipient_address": new_address(),
            "amount": AMOUNT,
            "interval_unit": "hour",
            "interval_count": 1,
            "billing_anchor": (timezone.now() - timedelta(seconds=30)).isoformat(),
            **fields,
        }
        response = api.post("/api/subscriptions/", body, format="json")
        assert response.status_code == 201, response.content
        assert response.data["mode"] == "presigned"
        assert response.data["wallet"] is None
        assert response.data["signed_periods_remaining"] == 0
        return int(response.data["id"])

    return create


def _unsigned(api: APIClient, subscription_id: int, count: int) -> list[dict[str, Any]]:
    response = api.get(
        f"/api/subscriptions/{subscription_id}/authorizations/unsigned?count={count}"
    )
    assert response.status_code == 200, response.content
    # Exactly what a client receives over the wire.
    return list(json.loads(response.content)["periods"])


def _upload(api: APIClient, subscription_id: int, items: list[dict[str, Any]]) -> Any:
    return api.post(
        f"/api/subscriptions/{subscription_id}/authorizations",
        {"authorizations": items},
        format="json",
    )


def _sign_and_upload(
    api: APIClient, subscription_id: int, account: LocalAccount, count: int
) -> list[dict[str, Any]]:
    periods = _unsigned(api, subscription_id, count)
    items = [
        {
            "period_index": period["period_index"],
            "typed_data": period["typed_data"],
            "signature": _sign(account, period["typed_data"]),
        }
        for period in periods
    ]
    response = _upload(api, subscription_id, items)
    assert response.status_code == 201, response.content
    assert response.data["signed_periods_remaining"] == count
    return periods


def _run_job(subscription_id: int) -> Job:
    job = payment_trigger(subscription=Subscription.objects.get(pk=subscription_id))
    engine.process_job(job_id=str(job.pk), worker_id="presigned-test")
    job.refresh_from_db()
    return job


# --- what the payer is asked to sign, and what is accepted ------------------------------------


def test_unsigned_typed_data_is_what_the_engine_would_submit(
    api: APIClient, presigned: Callable[..., int], payer: LocalAccount, token_address: str
) -> None:
    subscription_id = presigned(payer.address)
    subscription = Subscription.objects.get(pk=subscription_id)
    periods = _unsigned(api, subscription_id, 3)

    assert [period["period_index"] for period in periods] == [0, 1, 2]
    for period in periods:
        data = period["typed_data"]
        start = subscription.period_start(period["period_index"])
        assert data["primaryType"] == "TransferWithAuthorization"
        assert data["domain"] == {
            "name": "USD Coin",
            "version": "2",
            "chainId": 31337,
            "verifyingContract": token_address,
        }
        message = data["message"]
        assert message["from"] == payer.address
        assert message["to"] == subscription.recipient_address
        assert message["value"] == str(AMOUNT_ATOMIC)
        # The same derivation the engine uses: the chain accepts one settlement per period.
        assert message["nonce"] == period_nonce(
            network="eip155:31337",
            subscription_id=subscription_id,
            payer=payer.address,
            token_address=token_address,
            period_start=start,
        )
        assert int(message["validAfter"]) == int(start.timestamp()) - 600
        assert int(message["validBefore"]) == int(
            subscription.period_start(period["period_index"] + 1).timestamp()
        )
        assert period["signed"] is False


def test_upload_verifies_every_field_and_the_signer(
    api: APIClient,
    other_api: APIClient,
    staff_api: APIClient,
    presigned: Callable[..., int],
    payer: LocalAccount,
) -> None:
    subscription_id = presigned(payer.address)
    good, second = _unsigned(api, subscription_id, 2)

    def item(period: dict[str, Any], *, by: LocalAccount = payer, **changes: Any) -> dict[str, Any]:
        data = json.loads(json.dumps(period["typed_data"]))
        for key, value in changes.items():
            section, field = key.split("__")
            data[section][field] = value
        return {
            "period_index": period["period_index"],
            "typed_data": data,
            "signature": _sign(by, data),
        }

    refusals = {
        "recovers to": item(good, by=Account.create()),
        "message.value: expected 12500000": item(good, message__value="1"),
        "message.to: expected": item(good, message__to=new_address()),
        "message.validBefore: expected": item(good, message__validBefore="99999999999"),
        "message.nonce: expected": item(good, message__nonce="0x" + "11" * 32),
        "domain.chainId: expected 31337": item(good, domain__chainId=8453),
    }
    for reason, bad in refusals.items():
        # One bad item rejects the whole upload: the good one is not stored either.
        response = _upload(api, subscription_id, [item(second), bad])
        assert response.status_code == 400, (reason, response.content)
        assert reason in response.data["error"], (reason, response.data)
        assert response.data["code"] == "authorization_rejected"
    assert not PresignedAuthorization.objects.filter(subscription_id=subscription_id).exists()

    # A signature over a different message presented as the right one: does not recover.
    forged = item(good)
    forged["signature"] = item(good, message__value="1")["signature"]
    response = _upload(api, subscription_id, [forged])
    assert response.status_code == 400 and "recovers to" in response.data["error"]

    # Only the owner uploads: another user does not see it, staff may read but not upload.
    assert _upload(other_api, subscription_id, [item(good)]).status_code == 404
    assert _upload(staff_api, subscription_id, [item(good)]).status_code == 403

    response = _upload(api, subscription_id, [item(good), item(second)])
    assert response.status_code == 201, response.content
    assert response.data["signed_periods_remaining"] == 2
    assert [row["state"] for row in response.data["authorizations"]] == ["usable", "usable"]
    assert "signature" not in response.data["authorizations"][0]
    assert [period["signed"] for period in _unsigned(api, subscription_id, 3)] == [
        True,
        True,
        False,
    ]
    detail = api.get(f"/api/subscriptions/{subscription_id}/").data
    assert detail["signed_periods_remaining"] == 2
    listed = api.get("/api/subscriptions/?mode=presigned").data["results"]
    assert [row["signed_periods_remaining"] for row in listed] == [2]


def test_custodial_rules_still_hold_and_modes_do_not_mix(
    api: APIClient, presigned: Callable[..., int], funded_wallet: Any, payer: LocalAccount
) -> None:
    wallet = funded_wallet(0)
    base = {"service_name": "x", "recipient_address": new_address(), "amount": "1"}
    # Custodial needs a wallet; pre-signed takes none and needs the payer's address.
    assert api.post("/api/subscriptions/", base, format="json").status_code == 400
    response = api.post(
        "/api/subscriptions/",
        {**base, "mode": "presigned", "wallet": wallet.pk, "payer_address": payer.address},
        format="json",
    )
    assert response.status_code == 400 and "wallet" in response.data["details"]
    response = api.post("/api/subscriptions/", {**base, "mode": "presigned"}, format="json")
    assert response.status_code == 400 and "payer_address" in response.data["details"]

    subscription_id = presigned(payer.address)
    response = api.patch(
        f"/api/subscriptions/{subscription_id}/", {"wallet": wallet.pk}, format="json"
    )
    assert response.status_code == 400

    custodial = api.post("/api/subscriptions/", {**base, "wallet": wallet.pk}, format="json")
    assert custodial.status_code == 201 and custodial.data["signed_periods_remaining"] is None
    response = api.get(f"/api/subscriptions/{custodial.data['id']}/authorizations/unsigned")
    assert response.status_code == 400 and response.data["code"] == "not_presigned"


# --- paying ----------------------------------------------------------------------------------


@pytest.mark.worker
def test_worker_pays_a_presigned_period_with_no_key_held(
    api: APIClient,
    presigned: Callable[..., int],
    payer: LocalAccount,
    start_worker: Any,
    token_address: str,
    w3: Web3,
) -> None:
    subscription_id = presigned(payer.address)
    _sign_and_upload(api, subscription_id, payer, count=2)
    subscription = Subscription.objects.get(pk=subscription_id)
    before = token_balance(token_address, payer.address)
    start_worker()

    job = payment_trigger(subscription=subscription)
    done = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status__in=["completed", "failed"]).first(), 60
    )
    assert done.status == "completed", (done.error_code, done.error)
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.status == Payment.Status.COMPLETED
    stored = PresignedAuthorization.objects.get(subscription_id=subscription_id, period_index=0)
    # The stored window and nonce were submitted, not a now-based one.
    assert (payment.valid_after, payment.valid_before) == (stored.valid_after, stored.valid_before)
    assert payment.authorization_nonce == stored.nonce
    assert token_balance(token_address, payer.address) == before - AMOUNT_ATOMIC
    assert token_balance(token_address, subscription.recipient_address) == AMOUNT_ATOMIC
    # The payer paid no gas and the server never held a key for them.
    assert w3.eth.get_balance(payer.address) == 0
    assert not PayerWallet.objects.filter(address=payer.address).exists()
    assert api.get(f"/api/subscriptions/{subscription_id}/").data["signed_periods_remaining"] == 1


def test_missing_expired_or_outdated_authorization_fails_without_a_charge(
    api: APIClient,
    presigned: Callable[..., int],
    payer: LocalAccount,
    token_address: str,
) -> None:
    before = token_balance(token_address, payer.address)

    # Nothing uploaded.
    missing = presigned(payer.address)
    job = _run_job(missing)
    assert (job.status, job.error_code) == ("failed", "authorization_missing")
    assert "0 coming period(s) remain signed" in job.error
    assert Subscription.objects.get(pk=missing).status == Subscription.Status.PAST_DUE

    # Signed, then the amount changed: the stored signature is for other terms.
    outdated = presigned(payer.address)
    _sign_and_upload(api, outdated, payer, count=1)
    response = api.patch(f"/api/subscriptions/{outdated}/", {"amount": "13"}, format="json")
    assert response.status_code == 200, response.content
    job = _run_job(outdated)
    assert (job.status, job.error_code) == ("failed", "authorization_missing")
    assert "amount was signed as 12500000, the payment asks 13000000" in job.error

    # Signed, but the window has ended by the time the engine pays.
    expired = presigned(payer.address)
    _sign_and_upload(api, expired, payer, count=1)
    PresignedAuthorization.objects.filter(subscription_id=expired).update(valid_before=1)
    job = _run_job(expired)
    assert (job.status, job.error_code) == ("failed", "authorization_missing")
    assert "expired" in job.error

    assert token_balance(token_address, payer.address) == before


def test_authorization_canceled_on_chain_is_detected_and_never_retried_blindly(
    api: APIClient,
    presigned: Callable[..., int],
    payer: LocalAccount,
    deployer: LocalAccount,
    token_address: str,
    w3: Web3,
) -> None:
    subscription_id = presigned(payer.address)
    period = _sign_and_upload(api, subscription_id, payer, count=1)[0]
    nonce = period["typed_data"]["message"]["nonce"]
    before = token_balance(token_address, payer.address)

    # The payer changes their mind and burns the period's nonce with cancelAuthorization
    # (anyone may submit the payer's signed cancellation; here the deployer pays the gas).
    cancel = Account.sign_typed_data(
        payer.key,
        full_message={
            "types": {
                "EIP712Domain": period["typed_data"]["types"]["EIP712Domain"],
                "CancelAuthorization": [
                    {"name": "authorizer", "type": "address"},
                    {"name": "nonce", "type": "bytes32"},
                ],
            },
            "primaryType": "CancelAuthorization",
            "domain": period["typed_data"]["domain"],
            "message": {"authorizer": payer.address, "nonce": nonce},
        },
    )
    token = token_contract(w3, token_address)
    function = token.get_function_by_signature("cancelAuthorization(address,bytes32,bytes)")
    tx = function(
        payer.address, bytes.fromhex(nonce[2:]), bytes(cancel.signature)
    ).build_transaction({"from": deployer.address})
    sign_and_send(w3, deployer.key, tx)
    assert authorization_used(token_address, payer.address, nonce)

    job = _run_job(subscription_id)
    assert (job.status, job.error_code) == ("failed", "authorization_canceled")
    assert api.get(f"/api/subscriptions/{subscription_id}/").data["signed_periods_remaining"] == 0
    stored = api.get(f"/api/subscriptions/{subscription_id}/authorizations").data
    assert [row["state"] for row in stored["authorizations"]] == ["canceled"]

    # A later retry (dunning or an operator) asks the chain again; it sends nothing.
    payment = Payment.objects.get(pk=job.payment_id)
    Payment.objects.filter(pk=payment.pk).update(status=Payment.Status.PENDING)
    retry = Job.objects.create(subscription_id=subscription_id, payment=payment)
    engine.process_job(job_id=str(retry.pk), worker_id="presigned-test")
    retry.refresh_from_db()
    assert (retry.status, retry.error_code) == ("failed", "authorization_canceled")
    assert token_balance(token_address, payer.address) == before


def test_authorization_submitted_by_someone_else_is_recorded_once(
    api: APIClient,
    presigned: Callable[..., int],
    payer: LocalAccount,
    deployer: LocalAccount,
    token_address: str,
    w3: Web3,
) -> None:
    """The uploaded authorization was already submitted (by a crashed attempt, or by anyone
    who has it: the recipient, the payer): the engine finds it on chain and records it; the
    token contract itself refuses a second charge."""
    subscription_id = presigned(payer.address)
    period = _sign_and_upload(api, subscription_id, payer, count=1)[0]
    message = period["typed_data"]["message"]
    stored = PresignedAuthorization.objects.get(subscription_id=subscription_id)
    token = token_contract(w3, token_address)
    function = token.get_function_by_signature(
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    )
    tx = function(
        message["from"],
        message["to"],
        int(message["value"]),
        int(message["validAfter"]),
        int(message["validBefore"]),
        bytes.fromhex(message["nonce"][2:]),
        bytes.fromhex(stored.signature[2:]),
    ).build_transaction({"from": deployer.address})
    receipt = sign_and_send(w3, deployer.key, tx)
    before = token_balance(token_address, payer.address)

    job = _run_job(subscription_id)
    assert job.status == "completed", (job.error_code, job.error)
    assert job.result is not None and job.result["reconciled"] is True
    payment = Payment.objects.get(pk=job.payment_id)
    assert payment.transaction_hash == "0x" + bytes(receipt["transactionHash"]).hex()
    assert token_balance(token_address, payer.address) == before
