"""Idempotency-Key on every POST (Stripe's semantics), against PostgreSQL: the first answer is
kept and replayed, a different request with the same key answers 422, a concurrent repeat 409."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from autopay.api.tokens import issue_token
from core.idempotency.models import IdempotencyKey
from subscriptions.models import PayerWallet, Subscription
from tests.factories import PayerWalletFactory, new_address


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user)[1]}")
    return client


def _body(wallet: PayerWallet, amount: str = "9.99") -> dict[str, Any]:
    return {
        "service_name": "Pro plan",
        "wallet": wallet.pk,
        "recipient_address": new_address(),
        "amount": amount,
        "interval_unit": "month",
    }


def _post(client: APIClient, body: dict[str, Any], key: str | None, path: str = "") -> Any:
    headers: dict[str, Any] = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(path or "/api/subscriptions/", body, format="json", **headers)


def test_a_repeat_returns_the_first_answer_without_acting(api: APIClient, user: Any) -> None:
    body = _body(PayerWalletFactory.create(owner=user))
    first = _post(api, body, "order-1")
    again = _post(api, body, "order-1")
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Subscription.objects.filter(owner=user).count() == 1
    # Without a key (or with another) every POST acts.
    assert _post(api, body, None).status_code == 201
    assert _post(api, body, "order-2").status_code == 201
    assert Subscription.objects.filter(owner=user).count() == 3


def test_a_different_request_with_the_same_key_answers_422(api: APIClient, user: Any) -> None:
    wallet = PayerWalletFactory.create(owner=user)
    body = _body(wallet)
    assert _post(api, body, "k").status_code == 201
    other = _post(api, {**body, "amount": "10"}, "k")
    assert other.status_code == 422
    assert other.json() == {
        "success": False,
        "error": other.json()["error"],
        "code": "idempotency_key_reused",
    }
    # Same body, another path: a different request too.
    subscription = Subscription.objects.get(owner=user)
    assert _post(api, {}, "k", f"/api/subscriptions/{subscription.pk}/pause").status_code == 422
    assert Subscription.objects.filter(owner=user).count() == 1


def test_keys_belong_to_their_user(api: APIClient, user: Any, other_user: Any) -> None:
    other_api = _client(other_user)
    assert _post(api, _body(PayerWalletFactory.create(owner=user)), "shared").status_code == 201
    theirs = _post(other_api, _body(PayerWalletFactory.create(owner=other_user)), "shared")
    assert theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs


def test_an_error_answer_is_kept_too_and_the_body_is_stored_encrypted(
    api: APIClient, user: Any
) -> None:
    wallet = PayerWalletFactory.create(owner=user)
    bad = {**_body(wallet), "amount": "-1"}
    first = _post(api, bad, "bad")
    assert first.status_code == 400
    assert _post(api, bad, "bad").content == first.content
    row = IdempotencyKey.objects.get(key="bad")
    assert row.response_status == 400
    assert b"amount" not in row.response_body.encode()  # Fernet, not the plain answer


def test_an_expired_key_runs_again(api: APIClient, user: Any) -> None:
    body = _body(PayerWalletFactory.create(owner=user))
    assert _post(api, body, "old").status_code == 201
    IdempotencyKey.objects.filter(key="old").update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    again = _post(api, body, "old")
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert Subscription.objects.filter(owner=user).count() == 2


def test_a_key_left_processing_by_a_dead_process_is_taken_over(api: APIClient, user: Any) -> None:
    body = _body(PayerWalletFactory.create(owner=user))
    assert _post(api, body, "crash").status_code == 201
    IdempotencyKey.objects.filter(key="crash").update(
        status=IdempotencyKey.Status.PROCESSING, locked_until=timezone.now() - timedelta(seconds=1)
    )
    assert _post(api, body, "crash").status_code == 201
    assert IdempotencyKey.objects.get(key="crash").status == IdempotencyKey.Status.COMPLETED


@pytest.mark.parametrize("key", ["", " ", "x" * 256])
def test_a_malformed_key_answers_400(api: APIClient, user: Any, key: str) -> None:
    response = _post(api, _body(PayerWalletFactory.create(owner=user)), key)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_idempotency_key"
    assert not Subscription.objects.exists()


def test_every_post_takes_a_key(api: APIClient, user: Any) -> None:
    """Not only creation: an action (pause) and a wallet."""
    first = api.post("/api/wallets/", {"label": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="w")
    again = api.post("/api/wallets/", {"label": "a"}, format="json", HTTP_IDEMPOTENCY_KEY="w")
    assert first.status_code == 201 and again.content == first.content
    assert PayerWallet.objects.filter(owner=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_repeats_answer_409_and_one_request_acts(user: Any) -> None:
    """Four requests with one key at once: the first holds the key while its insert waits on a
    row lock; the same request answers 409, a different one 422; once the first finishes, its
    answer is replayed. One subscription in all."""
    wallet = PayerWalletFactory.create(owner=user)
    body = _body(wallet)
    key = str(uuid.uuid4())
    lock_taken, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def hold_the_wallet_row() -> None:
        # Another connection locks the wallet: the subscription insert (its foreign key check)
        # waits until it is released.
        try:
            with transaction.atomic():
                PayerWallet.objects.select_for_update().get(pk=wallet.pk)
                lock_taken.set()
                release.wait(30)
        finally:
            connections.close_all()

    def send(name: str, payload: dict[str, Any]) -> None:
        try:
            results[name] = _post(_client(user), payload, key)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_wallet_row)
    holder.start()
    assert lock_taken.wait(10)
    first = threading.Thread(target=send, args=("first", body))
    first.start()
    deadline = timezone.now() + timedelta(seconds=10)
    while not IdempotencyKey.objects.filter(key=key).exists():
        assert timezone.now() < deadline, "the first request never claimed its key"
    repeats = [
        threading.Thread(target=send, args=(name, payload))
        for name, payload in (("same", body), ("same2", body), ("different", _body(wallet, "1")))
    ]
    for thread in repeats:
        thread.start()
    for thread in repeats:
        thread.join(20)
    assert results["same"].status_code == results["same2"].status_code == 409
    assert results["same"].json()["code"] == "idempotency_key_in_use"
    assert results["same"]["Retry-After"] == "1"
    assert results["different"].status_code == 422
    assert "first" not in results  # still waiting on the lock

    release.set()
    holder.join(20)
    first.join(20)
    assert results["first"].status_code == 201
    send("after", body)
    assert results["after"].status_code == 201
    assert results["after"].content == results["first"].content
    assert results["after"]["Idempotent-Replayed"] == "true"
    assert Subscription.objects.filter(owner=user).count() == 1
    connection.close()
