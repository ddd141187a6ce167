"""A hostile user at the edges (issue 23): an ordinary second user B (``other_api``), nobody
(``anonymous_api``) and staff without permissions (``staff_api``) try what a review of the API
found, against PostgreSQL, Redis and, where a payment runs, anvil and real HTTP servers.

1. dates past the year 9999 (huge period indexes, thousand-year periods): 400, never 500;
2. webhook URLs on IPv6 addresses that carry a private IPv4 one: refused;
3. ``resource_url`` as a port scanner: checked (resolved) at every request, entries with
   ports, one generic ``resource_unavailable`` for the user, the detail in the log;
4. the audit log: TRUNCATE refused, pruning only on purpose and on the record, a token's
   entry shows its prefix, not its digest;
5. malleable (high-s) signatures: refused at upload;
6. ``X-Forwarded-Proto`` without a trusted proxy: tests/deploy/test_deploy_settings.py
   (``test_forwarded_proto_is_trusted_only_behind_the_declared_proxy``, settings are read at
   process start, so it runs a real subprocess);
7. a NUL byte in ``Idempotency-Key``: 400;
8. noisy neighbours: endpoints per user capped, resend throttled.
"""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from auditlog.models import LogEntry
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.db.utils import DatabaseError
from django.utils import timezone
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from rest_framework.test import APIClient

from autopay import engine
from autopay.api.tokens import issue_token
from autopay.devtools.anvil import free_port
from jobs.models import Job
from jobs.services import payment_trigger
from subscriptions.models import PresignedAuthorization, Subscription
from subscriptions.webhooks.models import EventType, WebhookDelivery
from subscriptions.webhooks.services import webhook_event_record
from tests.factories import PayerWalletFactory, SubscriptionFactory, UserFactory, new_address
from tests.test_auth import assert_envelope, rates

__all__ = ["rates"]  # the throttle-rate fixture of tests/test_auth.py, used below

REPO_ROOT = Path(__file__).resolve().parent.parent
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
PUBLIC_WEBHOOK_URL = "https://93.184.215.14/hooks"  # a literal: no DNS, never called here


# --- 1. dates past the year 9999 ---------------------------------------------------------------


def _presigned_of(owner: Any, payer: LocalAccount, **fields: Any) -> Subscription:
    """A pre-signed subscription of ``owner`` as the API creates them (rows, no chain)."""
    anchor = timezone.now() - timedelta(seconds=30)
    return SubscriptionFactory.create(
        owner=owner,
        mode=Subscription.Mode.PRESIGNED,
        payer_address=payer.address,
        token_address=django_settings.TOKEN_ADDRESS,
        network=django_settings.CHAIN_NETWORK,
        amount=Decimal("12.5"),
        interval_unit=fields.pop("interval_unit", "hour"),
        billing_anchor=anchor,
        next_payment_due_at=anchor,
        next_period_due_at=anchor,
        **fields,
    )


def _upload(client: APIClient, subscription_id: int, items: list[dict[str, Any]]) -> Any:
    return client.post(
        f"/api/subscriptions/{subscription_id}/authorizations",
        {"authorizations": items},
        format="json",
    )


def _sign(account: LocalAccount, typed_data: dict[str, Any]) -> str:
    signed = Account.sign_typed_data(account.key, full_message=typed_data)
    return "0x" + bytes(signed.signature).hex()


@pytest.mark.django_db
@pytest.mark.parametrize("period_index", [10**20, 2**63, 2**31])
def test_a_period_index_past_the_calendar_is_a_400(
    other_user: Any, other_api: APIClient, period_index: int
) -> None:
    payer = Account.create()
    subscription = _presigned_of(other_user, payer, interval_unit="month")
    message = {"from": payer.address, "to": new_address(), "value": "1", "nonce": "0x" + "0" * 64}

    answer = _upload(
        other_api,
        subscription.pk,
        [{"period_index": period_index, "message": message, "signature": "0x" + "1b" * 65}],
    )

    assert_envelope(answer, 400)
    assert not PresignedAuthorization.objects.filter(subscription=subscription).exists()


@pytest.mark.django_db
def test_a_thousand_year_period_is_refused_and_an_old_one_answers_400(
    other_user: Any, other_api: APIClient, settings: Any
) -> None:
    settings.CHAIN_NETWORK = "eip155:31337"
    payer = Account.create()
    body = {
        "service_name": "Forever",
        "mode": "presigned",
        "payer_address": payer.address,
        "recipient_address": new_address(),
        "amount": "1",
        "interval_unit": "year",
        "interval_count": 1000,
    }
    refused = assert_envelope(other_api.post("/api/subscriptions/", body, format="json"), 400)
    assert "interval_count" in str(refused), refused
    ten_years = other_api.post("/api/subscriptions/", {**body, "interval_count": 10}, format="json")
    assert ten_years.status_code == 201, ten_years.content
    eleven = other_api.post("/api/subscriptions/", {**body, "interval_count": 11}, format="json")
    assert_envelope(eleven, 400)
    weeks = {**body, "interval_unit": "week", "interval_count": 1000}  # 19 years
    assert_envelope(other_api.post("/api/subscriptions/", weeks, format="json"), 400)

    # A row made before the bound (or by hand): its far periods answer 400, not 500.
    old = _presigned_of(other_user, payer, interval_unit="year", interval_count=1000)
    unsigned = other_api.get(f"/api/subscriptions/{old.pk}/authorizations/unsigned?count=8")
    assert_envelope(unsigned, 400)
    message = {"from": payer.address, "to": old.recipient_address, "value": "12500000"}
    upload = _upload(
        other_api, old.pk, [{"period_index": 20, "message": message, "signature": "0x" + "1b" * 65}]
    )
    assert_envelope(upload, 400)


@pytest.fixture
def bare_staff_api(db: Any) -> APIClient:
    """Staff without any permission (no superuser, no group)."""
    client = APIClient()
    _, token = issue_token(UserFactory.create(is_staff=True))
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.mark.django_db
def test_nobody_else_reaches_the_far_periods_of_bs_subscription(
    other_user: Any, anonymous_api: APIClient, bare_staff_api: APIClient
) -> None:
    payer = Account.create()
    subscription = _presigned_of(other_user, payer, interval_unit="month")
    message = {"from": payer.address, "to": new_address(), "value": "1"}
    for period_index in (2**63, 2**31 - 1):
        item = {"period_index": period_index, "message": message, "signature": "0x" + "1b" * 65}

        assert_envelope(_upload(anonymous_api, subscription.pk, [item]), 401)
        answer = _upload(bare_staff_api, subscription.pk, [item])
        assert 400 <= answer.status_code < 500 and answer.json()["success"] is False, answer

    assert not PresignedAuthorization.objects.filter(subscription=subscription).exists()


# --- 2. IPv4 inside IPv6 in webhook URLs -------------------------------------------------------

# Every embedding of a private or metadata IPv4 address (the comment says which it reaches).
EMBEDDED_PRIVATE = [
    "https://[::7f00:1]/x",  # IPv4-compatible 127.0.0.1
    "https://[::ffff:127.0.0.1]/x",  # IPv4-mapped 127.0.0.1
    "https://[64:ff9b::a9fe:a9fe]/x",  # NAT64 (well-known prefix) 169.254.169.254
    "https://[64:ff9b::a00:1]/x",  # NAT64 10.0.0.1
    "https://[64:ff9b:1:a9fe:a9:fe00::]/x",  # NAT64 (local-use /48) 169.254.169.254
    "https://[2002:7f00:1::]/x",  # 6to4 127.0.0.1
    "https://[2002:a9fe:a9fe::1]/x",  # 6to4 169.254.169.254
    "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x",  # Teredo, client 127.0.0.1
]


@pytest.mark.django_db
@pytest.mark.parametrize("url", EMBEDDED_PRIVATE)
def test_webhook_urls_that_carry_a_private_ipv4_address_are_refused(
    other_api: APIClient, url: str
) -> None:
    answer = other_api.post("/api/webhook-endpoints/", {"url": url}, format="json")

    body = assert_envelope(answer, 400)
    assert "public addresses only" in body["error"], body


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        PUBLIC_WEBHOOK_URL,
        "https://[::ffff:93.184.215.14]/x",  # IPv4-mapped public
        "https://[64:ff9b::5db8:d70e]/x",  # NAT64 of a public address
    ],
)
def test_webhook_urls_on_public_addresses_still_pass(other_api: APIClient, url: str) -> None:
    answer = other_api.post("/api/webhook-endpoints/", {"url": url}, format="json")

    assert answer.status_code == 201, answer.content


# --- 3. resource_url: allow-list at every request, ports, one message --------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A plain HTTP service that answers 302 (like the app's /admin/) and counts requests."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(302)
        self.send_header("Location", "/admin/login/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_service() -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def _resource_subscription(funded_wallet: Any, owner: Any, token_address: str, url: str) -> Any:
    wallet = funded_wallet(0, owner=owner)
    return SubscriptionFactory.create(
        owner=owner,
        wallet=wallet,
        payer_address=wallet.address,
        token_address=token_address,
        resource_url=url,
    )


def _run(subscription: Subscription) -> Job:
    job = payment_trigger(subscription=subscription)
    engine.process_job(job_id=str(job.pk), worker_id="hostile-test")
    job.refresh_from_db()
    return job


@pytest.mark.chain
@pytest.mark.django_db(transaction=True)
def test_resource_url_errors_do_not_tell_open_closed_and_http_ports_apart(
    engine_settings: Any,
    funded_wallet: Any,
    other_user: Any,
    other_api: APIClient,
    token_address: str,
    http_service: tuple[int, list[str]],
    caplog: Any,
) -> None:
    engine_settings.AUTOPAY_RESOURCE_ALLOWED_HOSTS = ["127.0.0.1"]
    http_port, seen = http_service
    redis_port = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")).port or 6379
    postgres_port = int(connection.settings_dict["PORT"] or 5432)
    urls = [
        f"http://127.0.0.1:{redis_port}/",
        f"http://127.0.0.1:{postgres_port}/",
        f"http://127.0.0.1:{free_port()}/",  # closed
        f"http://127.0.0.1:{http_port}/admin/",  # an HTTP service that answers 302
    ]
    caplog.set_level(logging.WARNING, logger="autopay.rails.x402_http")

    jobs = [
        _run(_resource_subscription(funded_wallet, other_user, token_address, url)) for url in urls
    ]

    assert seen == ["/admin/"], "the allowed HTTP service was really asked"
    assert {job.error_code for job in jobs} == {"resource_unavailable"}
    assert len({job.error for job in jobs}) == 1, [job.error for job in jobs]
    shown = [other_api.get(f"/api/jobs/{job.pk}/").json()["data"] for job in jobs]
    seen_by_b = {
        (answer["errorCode"], answer["error"], *(a["error"] for a in answer["attempts"]))
        for answer in shown
    }
    assert len(seen_by_b) == 1, shown
    for url in urls:
        assert str(urlsplit(url).port) not in jobs[0].error
    # The operator's log has what happened to each.
    logged = caplog.text
    assert "answered 302" in logged and "unreachable" in logged
    for url in urls:
        assert url in logged


@pytest.mark.chain
@pytest.mark.django_db(transaction=True)
def test_the_allow_list_is_checked_at_every_request(
    engine_settings: Any,
    funded_wallet: Any,
    other_user: Any,
    token_address: str,
    http_service: tuple[int, list[str]],
) -> None:
    port, seen = http_service
    engine_settings.AUTOPAY_RESOURCE_ALLOWED_HOSTS = ["127.0.0.1"]
    url = f"http://127.0.0.1:{port}/plans/pro"
    subscription = _resource_subscription(funded_wallet, other_user, token_address, url)

    # The operator removes the host: the subscription saved before does not call it any more.
    engine_settings.AUTOPAY_RESOURCE_ALLOWED_HOSTS = ["pay.example.com"]
    job = _run(subscription)

    assert seen == []
    assert job.error_code == "resource_unavailable"


@pytest.mark.chain
@pytest.mark.django_db(transaction=True)
def test_an_allowed_name_that_resolves_to_a_private_address_is_not_called(
    engine_settings: Any,
    funded_wallet: Any,
    other_user: Any,
    token_address: str,
    http_service: tuple[int, list[str]],
    caplog: Any,
) -> None:
    port, seen = http_service
    engine_settings.AUTOPAY_RESOURCE_ALLOWED_HOSTS = ["localhost", "*"]
    caplog.set_level(logging.WARNING, logger="autopay.rails.x402_http")
    subscription = _resource_subscription(
        funded_wallet, other_user, token_address, f"http://localhost:{port}/plans/pro"
    )

    job = _run(subscription)

    assert seen == [], "localhost resolves to a loopback address no entry names"
    assert job.error_code == "resource_unavailable"
    assert "non-public address" in caplog.text


@pytest.mark.django_db
def test_allow_list_entries_may_carry_a_port(
    other_user: Any, other_api: APIClient, settings: Any
) -> None:
    settings.CHAIN_NETWORK = "eip155:31337"
    settings.AUTOPAY_RESOURCE_ALLOWED_HOSTS = ["127.0.0.1:4021", "[::1]:4022"]
    wallet = PayerWalletFactory.create(owner=other_user)

    def create(url: str) -> Any:
        body = {
            "service_name": "Paid API",
            "wallet": wallet.pk,
            "recipient_address": new_address(),
            "amount": "1",
            "resource_url": url,
        }
        return other_api.post("/api/subscriptions/", body, format="json")

    assert create("http://127.0.0.1:4021/plans/pro").status_code == 201
    assert create("http://[::1]:4022/plans/pro").status_code == 201
    for url in ("http://127.0.0.1:6379/", "http://127.0.0.1/", "http://[::1]:4021/"):
        body = assert_envelope(create(url), 400)
        assert "AUTOPAY_RESOURCE_ALLOWED_HOSTS" in str(body), body


# --- 4. the audit log --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_audit_log_cannot_be_truncated(other_user: Any) -> None:
    SubscriptionFactory.create(owner=other_user)
    before = LogEntry.objects.count()
    assert before

    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("TRUNCATE auditlog_logentry")

    assert LogEntry.objects.count() == before


@pytest.mark.django_db(transaction=True)
def test_an_operator_prunes_old_entries_on_purpose_and_on_the_record(other_user: Any) -> None:
    old = SubscriptionFactory.create(owner=other_user)
    recent = SubscriptionFactory.create(owner=other_user)
    # Written long ago: the trigger refuses changing an entry, so it is inserted that way.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO auditlog_logentry (content_type_id, object_pk, object_id, object_repr,"
            " action, changes, changes_text, timestamp, additional_data, serialized_data,"
            " remote_addr, remote_port, cid, actor_email, actor_id)"
            " SELECT content_type_id, object_pk, object_id, 'ancient', action, changes,"
            " changes_text, %s, additional_data, serialized_data, remote_addr, remote_port,"
            " cid, actor_email, actor_id FROM auditlog_logentry WHERE id = %s",
            [timezone.now() - timedelta(days=400), LogEntry.objects.get_for_object(old).get().pk],
        )
    assert LogEntry.objects.filter(object_repr="ancient").count() == 1
    kept = LogEntry.objects.get_for_object(recent).count()
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
    }

    result = subprocess.run(
        [sys.executable, "manage.py", "autopay_audit_prune", "--older-than-days", "365"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "Deleted 1 audit entries" in result.stdout
    assert not LogEntry.objects.filter(object_repr="ancient").exists()
    assert LogEntry.objects.get_for_object(recent).count() == kept
    record = LogEntry.objects.filter(object_repr__startswith="audit entries before").get()
    assert record.action == LogEntry.Action.DELETE
    assert record.changes["pruned_entries"] == [None, 1]
    assert record.additional_data["command"] == "autopay_audit_prune"
    assert record.additional_data["os_user"]
    # The trigger is back: nothing else can delete an entry.
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM auditlog_logentry WHERE id = %s", [record.pk])


@pytest.mark.django_db
def test_a_new_tokens_audit_entry_names_its_prefix_not_its_digest(other_user: Any) -> None:
    answer = APIClient().post(
        "/api/auth/tokens",
        {"username": other_user.username, "password": "correct-horse-battery"},
        format="json",
    )
    assert answer.status_code in (200, 201), answer.content
    token = answer.json()["token"]

    from knox.models import AuthToken

    row = AuthToken.objects.get(user=other_user)
    entry = LogEntry.objects.get_for_object(row).get()
    assert row.digest not in entry.object_repr
    assert row.digest not in str(entry.changes)
    assert entry.object_repr.startswith(row.token_key)
    assert token.startswith(row.token_key)


# --- 5. malleable signatures -------------------------------------------------------------------


def _high_s(signature: str) -> str:
    """The other valid signature of the same message: s -> n - s, v flipped (EIP-2)."""
    raw = bytes.fromhex(signature.removeprefix("0x"))
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    flipped = (SECP256K1_ORDER - s).to_bytes(32, "big")
    return "0x" + (r + flipped + bytes([55 - v])).hex()


@pytest.mark.django_db
def test_a_high_s_signature_is_refused_at_upload(
    other_user: Any, other_api: APIClient, settings: Any
) -> None:
    payer = Account.create()
    subscription = _presigned_of(other_user, payer)
    unsigned = other_api.get(f"/api/subscriptions/{subscription.pk}/authorizations/unsigned")
    assert unsigned.status_code == 200, unsigned.content
    period = unsigned.json()["periods"][0]
    low = _sign(payer, period["typed_data"])
    high = _high_s(low)
    twin = Account.recover_message(
        encode_typed_data(full_message=period["typed_data"]), signature=high
    )
    assert twin == payer.address, "the high-s twin recovers to the payer too"
    item = {"period_index": period["period_index"], "typed_data": period["typed_data"]}

    refused = assert_envelope(
        _upload(other_api, subscription.pk, [{**item, "signature": high}]), 400
    )

    assert "upper half" in refused["error"], refused
    assert not PresignedAuthorization.objects.filter(subscription=subscription).exists()
    accepted = _upload(other_api, subscription.pk, [{**item, "signature": low}])
    assert accepted.status_code == 201, accepted.content


# --- 7. Idempotency-Key ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["a\x00b", "\x00", "key\x07", "line\nbreak"])
def test_control_characters_in_an_idempotency_key_are_a_400(
    other_api: APIClient, anonymous_api: APIClient, key: str
) -> None:
    for client in (other_api, anonymous_api):
        answer = client.post(
            "/api/wallets/", {"label": "w"}, format="json", HTTP_IDEMPOTENCY_KEY=key
        )
        body = assert_envelope(answer, 400)
        assert "Idempotency-Key" in body["error"], body


# --- 8. noisy neighbours -----------------------------------------------------------------------


@pytest.mark.django_db
def test_webhook_endpoints_per_user_are_capped(
    other_api: APIClient, api: APIClient, staff_api: APIClient, settings: Any
) -> None:
    assert settings.WEBHOOK_MAX_ENDPOINTS_PER_USER == 10  # the default
    created = [
        other_api.post("/api/webhook-endpoints/", {"url": PUBLIC_WEBHOOK_URL}, format="json")
        for _ in range(11)
    ]

    assert [answer.status_code for answer in created] == [201] * 10 + [409]
    body = assert_envelope(created[-1], 409)
    assert "WEBHOOK_MAX_ENDPOINTS_PER_USER" in body["error"], body
    # The others have their own count, staff too; a deleted endpoint frees a place.
    for client in (api, staff_api):
        answer = client.post("/api/webhook-endpoints/", {"url": PUBLIC_WEBHOOK_URL}, format="json")
        assert answer.status_code == 201, answer.content
    assert other_api.delete(f"/api/webhook-endpoints/{created[0].json()['id']}/").status_code == 204
    again = other_api.post("/api/webhook-endpoints/", {"url": PUBLIC_WEBHOOK_URL}, format="json")
    assert again.status_code == 201

    settings.WEBHOOK_MAX_ENDPOINTS_PER_USER = 2  # the user above has one
    second = api.post("/api/webhook-endpoints/", {"url": PUBLIC_WEBHOOK_URL}, format="json")
    assert second.status_code == 201
    assert_envelope(
        api.post("/api/webhook-endpoints/", {"url": PUBLIC_WEBHOOK_URL}, format="json"), 409
    )


@pytest.mark.django_db
def test_webhook_resend_is_throttled_per_user(
    rates: Callable[..., None], other_user: Any, other_api: APIClient, api: APIClient
) -> None:
    rates(webhook_resend="3/hour")
    endpoint = other_api.post("/api/webhook-endpoints/", {"url": PUBLIC_WEBHOOK_URL}, format="json")
    assert endpoint.status_code == 201
    endpoint_id = endpoint.json()["id"]
    webhook_event_record(owner_id=other_user.pk, type=EventType.JOB_FAILED, data={"jobId": "1"})
    delivery = WebhookDelivery.objects.get(endpoint_id=endpoint_id)
    url = f"/api/webhook-endpoints/{endpoint_id}/deliveries/{delivery.pk}/resend"

    answers = [other_api.post(url) for _ in range(4)]

    assert [answer.status_code for answer in answers] == [202] * 3 + [429]
    assert_envelope(answers[-1], 429)
    assert int(answers[-1]["Retry-After"]) > 60
    assert other_api.get(f"/api/webhook-endpoints/{endpoint_id}/deliveries/").status_code == 200
