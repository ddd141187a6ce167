"""Outbound webhooks against a real HTTP receiver that verifies Standard Webhooks signatures
with the ``standardwebhooks`` package, through real Celery workers where delivery is the point.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from autopay.devtools.anvil import free_port
from autopay.scan import scan_due
from jobs import services as job_services
from jobs.models import Job
from subscriptions import services
from subscriptions.models import Payment, Subscription
from subscriptions.services import payment_build
from subscriptions.webhooks import delivery as sender
from subscriptions.webhooks.models import (
    OPERATOR_EVENT_TYPES,
    EventType,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from subscriptions.webhooks.services import (
    webhook_endpoint_create,
    webhook_endpoint_secrets,
    webhook_retry_delay,
)
from tests.conftest import wait_for
from tests.factories import PayerWalletFactory, SubscriptionFactory, failed_job
from tests.integrations.receiver import Receiver

FAST_RETRIES = {
    "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.3",
    "WEBHOOK_RETRY_MAX_DELAY_SECONDS": "1",
    "WEBHOOK_TIMEOUT_SECONDS": "1",
}


@pytest.fixture
def fast_webhooks(settings: Any) -> Any:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.3
    settings.WEBHOOK_RETRY_MAX_DELAY_SECONDS = 1.0
    settings.WEBHOOK_TIMEOUT_SECONDS = 1.0
    return settings


@pytest.fixture
def receiver() -> Any:
    made = Receiver(port=free_port())
    yield made
    made.stop()


def _register(api: APIClient, url: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/api/webhook-endpoints/", {"url": url, **fields}, format="json")
    assert response.status_code == 201, response.content
    return dict(response.json())


def _subscription(owner: Any, **fields: Any) -> Subscription:
    wallet = PayerWalletFactory.create(owner=owner)
    return SubscriptionFactory.create(
        owner=owner, wallet=wallet, payer_address=wallet.address, **fields
    )


def _cause_every_event(owner: Any) -> None:
    """Each event type at least once, through the services that change the state."""
    failing = _subscription(owner, amount=Decimal("12.5"))
    payment = payment_build(subscription=failing, index=0)
    payment.save()
    services.payment_record_failure(payment=payment, code="insufficient_balance", message="no")
    paying = _subscription(owner)
    paid = payment_build(subscription=paying, index=0)
    paid.save()
    services.payment_record_success(payment=paid, transaction_hash="0x" + "cd" * 32, block_number=7)
    services.subscription_cancel(subscription=paying)
    # No message is published for the jobs: the test's worker only sends webhooks here.
    job_payment = payment_build(subscription=_subscription(owner), index=0)
    job_payment.save()
    job = job_services.job_create(payment=job_payment, source=Job.Source.MANUAL, publish=False)
    claimed = job_services.job_claim(job_id=job.pk, worker_id="w")
    assert claimed is not None
    job_services.job_fail(job=claimed, worker_id="w", code="rpc_timeout", message="timed out")
    # Ten one-minute periods owed: the oldest seven are waived (AUTOPAY_MAX_MISSED_PERIODS=3).
    missed = _subscription(
        owner,
        interval_unit=Subscription.IntervalUnit.MINUTE,
        billing_anchor=timezone.now() - timedelta(minutes=9, seconds=30),
    )
    with transaction.atomic():
        services.payment_take_due(subscription=missed, now=timezone.now())
    # Unpaid: a past-due subscription whose dunning retries are spent fails again.
    unpaid = _subscription(owner, status=Subscription.Status.PAST_DUE, dunning_attempts=4)
    last = payment_build(subscription=unpaid, index=0)
    last.save()
    services.payment_record_failure(payment=last, code="insufficient_balance", message="no")


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_every_event_arrives_signed_after_the_receiver_was_down(
    fast_webhooks: Any,
    transactional_db: Any,
    start_worker: Any,
    worker_env: dict[str, str],
    user: Any,
    api: APIClient,
    receiver: Receiver,
) -> None:
    """The receiver is down while the events happen, comes back slow (the first request of
    each event times out) and then answers: every event arrives, verified by the
    standardwebhooks package; a duplicate carries the same webhook-id and body."""
    start_worker(concurrency=2, extra_env=FAST_RETRIES)
    created = _register(api, receiver.url)
    receiver.secret = created["secret"]

    _cause_every_event(user)
    events = {event.public_id: event for event in WebhookEvent.objects.all()}
    # Every user event (operator events go to staff endpoints: tests/autopay/test_faults.py).
    assert {event.type for event in events.values()} == set(EventType.values) - set(
        OPERATOR_EVENT_TYPES
    )

    # Down: connections are refused and the deliveries are retried with backoff.
    wait_for(
        lambda: WebhookDelivery.objects.filter(attempts__gte=2).count() >= len(events),
        timeout=60,
    )
    receiver.slow_once = True
    receiver.slow_seconds = 1.5
    receiver.start()

    def all_delivered() -> bool:
        sender.webhook_deliveries_dispatch()  # what beat runs every few seconds
        return not WebhookDelivery.objects.exclude(status=WebhookDelivery.Status.SUCCEEDED).exists()

    wait_for(all_delivered, timeout=90, interval=0.5)
    assert receiver.rejected == []
    assert receiver.ids() == set(events)
    by_id: dict[str, list[Any]] = {}
    for item in receiver.received:
        by_id.setdefault(item.webhook_id, []).append(item)
    for webhook_id, copies in by_id.items():
        assert len(copies) >= 2, "the slow first answer timed out: a duplicate was sent"
        assert len({copy.body for copy in copies}) == 1
        payload = copies[0].payload
        event = events[webhook_id]
        assert payload["id"] == webhook_id
        assert payload["type"] == event.type
        assert payload["timestamp"].startswith(event.created_at.date().isoformat())
        assert payload["data"] == event.data
    succeeded = by_id[next(iter(by_id))][0].payload
    assert set(succeeded) == {"id", "type", "timestamp", "data"}
    # Objects in the API's own shape: a payment's amount is an exact string.
    paid = next(
        copies[0].payload["data"]
        for copies in by_id.values()
        if copies[0].payload["type"] == "payment.succeeded"
    )
    assert paid["status"] == "completed" and paid["amount"] == "10"
    job = next(c[0].payload for c in by_id.values() if c[0].payload["type"] == "job.failed")
    assert job["data"]["status"] == "failed" and job["data"]["errorCode"] == "rpc_timeout"

    log = api.get(f"/api/webhook-endpoints/{created['id']}/deliveries/").json()
    assert log["count"] == len(events)
    assert all(row["status"] == "succeeded" and row["attempts"] >= 3 for row in log["results"])


def test_events_are_written_with_their_change_or_not_at_all(
    fast_webhooks: Any, user: Any, api: APIClient, receiver: Receiver
) -> None:
    subscription = _subscription(user)
    payment = payment_build(subscription=subscription, index=0)
    payment.save()
    # Nobody to tell: no endpoint, no event.
    services.payment_record_failure(payment=payment, code="insufficient_balance", message="x")
    assert not WebhookEvent.objects.exists()

    _register(api, receiver.url, event_types=["payment.failed"])
    with pytest.raises(RuntimeError), transaction.atomic():
        services.payment_record_failure(payment=payment, code="rpc_timeout", message="x")
        assert WebhookEvent.objects.count() == 1
        raise RuntimeError("the change rolls back")
    assert not WebhookEvent.objects.exists()
    services.payment_record_failure(payment=payment, code="rpc_timeout", message="x")
    # past_due happened already; only the wanted type gets a delivery.
    assert list(WebhookEvent.objects.values_list("type", flat=True)) == ["payment.failed"]
    assert WebhookDelivery.objects.count() == 1


def test_the_scan_records_waived_periods_in_its_batch(
    fast_webhooks: Any, user: Any, api: APIClient, receiver: Receiver
) -> None:
    _register(api, receiver.url)
    _subscription(
        user,
        interval_unit=Subscription.IntervalUnit.MINUTE,
        billing_anchor=timezone.now() - timedelta(minutes=5, seconds=30),
    )
    scan_due(publish=False)
    waived = Payment.objects.filter(status=Payment.Status.WAIVED)
    assert waived.count() == 3
    events = WebhookEvent.objects.filter(type=EventType.PAYMENT_WAIVED)
    assert sorted(event.data["id"] for event in events) == sorted(
        waived.values_list("pk", flat=True)
    )
    assert WebhookDelivery.objects.filter(event__in=events).count() == 3


def test_in_process_delivery_signs_with_both_secrets_during_a_rotation(
    fast_webhooks: Any, user: Any, api: APIClient, receiver: Receiver
) -> None:
    created = _register(api, receiver.url)
    old_secret = created["secret"]
    rotated = api.post(f"/api/webhook-endpoints/{created['id']}/rotate-secret")
    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret != old_secret and new_secret.startswith("whsec_")
    assert "secret" not in api.get(f"/api/webhook-endpoints/{created['id']}/").json()
    receiver.secret = old_secret  # a receiver that has not switched yet
    receiver.start()
    services.subscription_cancel(subscription=_subscription(user))
    delivery = WebhookDelivery.objects.get()
    assert sender.webhook_deliver(delivery_id=delivery.pk).status == "succeeded"
    signature = receiver.received[0].headers["webhook-signature"]
    assert len(signature.split(" ")) == 2
    Webhook(new_secret).verify(receiver.received[0].body, receiver.received[0].headers)

    # Resend: the same event id again, through the API's delivery log.
    detail = api.get(f"/api/webhook-endpoints/{created['id']}/deliveries/{delivery.pk}/").json()
    assert detail["status"] == "succeeded"
    assert detail["log"][0]["status_code"] == 200
    assert detail["payload"]["id"] == receiver.received[0].webhook_id
    resend = api.post(f"/api/webhook-endpoints/{created['id']}/deliveries/{delivery.pk}/resend")
    assert resend.status_code == 202 and resend.json()["status"] == "pending"
    assert sender.webhook_deliver(delivery_id=delivery.pk).status == "succeeded"
    assert [item.webhook_id for item in receiver.received] == [receiver.received[0].webhook_id] * 2
    assert json.loads(receiver.received[1].body) == json.loads(receiver.received[0].body)


def test_an_endpoint_failing_for_three_days_is_disabled_and_its_events_kept(
    fast_webhooks: Any, user: Any, api: APIClient, receiver: Receiver
) -> None:
    created = _register(api, receiver.url)
    receiver.secret = created["secret"]
    receiver.mode = "error"
    receiver.start()
    services.subscription_cancel(subscription=_subscription(user))
    first = WebhookDelivery.objects.get()
    assert sender.webhook_deliver(delivery_id=first.pk).status == "retrying"
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.enabled and endpoint.failing_since is not None
    WebhookEndpoint.objects.update(failing_since=timezone.now() - timedelta(hours=72, minutes=1))
    WebhookDelivery.objects.update(next_attempt_at=timezone.now())
    sender.webhook_deliver(delivery_id=first.pk)
    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert "failing for 72 hours" in endpoint.disabled_reason
    # Events go on being recorded for its owner, and wait.
    services.subscription_cancel(subscription=_subscription(user))
    assert WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING).count() == 2
    assert sender.webhook_deliveries_dispatch() == 0
    assert sender.webhook_deliver(delivery_id=first.pk).status == "skipped"

    receiver.mode = "ok"
    enabled = api.patch(
        f"/api/webhook-endpoints/{created['id']}/", {"enabled": True}, format="json"
    )
    assert enabled.status_code == 200 and enabled.json()["failing_since"] is None
    for delivery in WebhookDelivery.objects.all():
        sender.webhook_deliver(delivery_id=delivery.pk)
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"succeeded"}
    assert len(receiver.ids()) == 2


def test_a_delivery_gives_up_after_its_retry_window(
    fast_webhooks: Any, user: Any, api: APIClient, receiver: Receiver
) -> None:
    _register(api, receiver.url)  # nothing listens on the port
    services.subscription_cancel(subscription=_subscription(user))
    WebhookDelivery.objects.update(retry_until=timezone.now() + timedelta(milliseconds=100))
    delivery = WebhookDelivery.objects.get()
    assert sender.webhook_deliver(delivery_id=delivery.pk).status == "failed"
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and "Connection" in delivery.last_error


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://100.64.0.1/hook",
        "http://93.184.215.14/hook",  # plain http outside development
        "https://user:pass@93.184.215.14/hook",
        "https://no-such-host.invalid/hook",
    ],
)
def test_endpoints_on_private_addresses_are_refused(
    api: APIClient, settings: Any, url: str
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    response = api.post("/api/webhook-endpoints/", {"url": url}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "webhook_url_refused"
    assert not WebhookEndpoint.objects.exists()


def test_a_send_to_an_address_that_became_private_is_refused_before_connecting(
    fast_webhooks: Any, user: Any, api: APIClient, receiver: Receiver
) -> None:
    created = _register(api, receiver.url)
    receiver.secret = created["secret"]
    receiver.start()
    services.subscription_cancel(subscription=_subscription(user))
    fast_webhooks.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    delivery = WebhookDelivery.objects.get()
    assert sender.webhook_deliver(delivery_id=delivery.pk).status == "retrying"
    delivery.refresh_from_db()
    assert "development" in delivery.last_error  # refused before any connection
    assert receiver.received == []


def test_endpoints_and_logs_belong_to_their_owner(
    fast_webhooks: Any, api: APIClient, other_api: APIClient, receiver: Receiver, user: Any
) -> None:
    created = _register(api, receiver.url, event_types=["job.failed"], description="ops")
    assert created["event_types"] == ["job.failed"]
    assert other_api.get(f"/api/webhook-endpoints/{created['id']}/").status_code == 404
    assert other_api.get(f"/api/webhook-endpoints/{created['id']}/deliveries/").status_code == 404
    assert other_api.delete(f"/api/webhook-endpoints/{created['id']}/").status_code == 404
    failed_job(_subscription(user))  # a factory, not a service: no event
    assert api.get("/api/webhook-endpoints/").json()["count"] == 1
    assert api.delete(f"/api/webhook-endpoints/{created['id']}/").status_code == 204
    assert Job.objects.count() == 1


def test_retry_delays_grow_exponentially_with_jitter(settings: Any) -> None:
    settings.WEBHOOK_RETRY_BASE_SECONDS = 5
    settings.WEBHOOK_RETRY_MAX_DELAY_SECONDS = 3600
    for attempts, full in [(1, 5), (2, 10), (5, 80), (20, 3600)]:
        delays = {webhook_retry_delay(attempts=attempts) for _ in range(50)}
        assert all(full / 2 <= delay <= full for delay in delays)
        assert len(delays) > 1


def test_key_rotation_reencrypts_webhook_secrets(settings: Any, user: Any) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.AUTOPAY_KEY_ENCRYPTION_KEY = ""
    settings.AUTOPAY_KEY_ENCRYPTION_KEYS = [old_key]
    endpoint, secret = webhook_endpoint_create(owner=user, url="https://93.184.215.14/hooks")
    settings.AUTOPAY_KEY_ENCRYPTION_KEYS = [new_key, old_key]
    out = io.StringIO()
    call_command("autopay_rotate_wallet_keys", "--no-progress", stdout=out)
    assert "1 webhook endpoint(s) re-encrypted" in out.getvalue()
    settings.AUTOPAY_KEY_ENCRYPTION_KEYS = [new_key]
    endpoint.refresh_from_db()
    assert webhook_endpoint_secrets(endpoint=endpoint, now=timezone.now()) == [secret]


def test_redirects_are_not_followed(
    fast_webhooks: Any, user: Any, api: APIClient, receiver: Receiver
) -> None:
    created = _register(api, receiver.url)
    receiver.secret = created["secret"]
    receiver.mode = "redirect"
    receiver.start()
    services.subscription_cancel(subscription=_subscription(user))
    delivery = WebhookDelivery.objects.get()
    assert sender.webhook_deliver(delivery_id=delivery.pk).status == "retrying"
    delivery.refresh_from_db()
    assert (delivery.last_status_code, delivery.last_error) == (307, "HTTP 307")
    assert len(receiver.received) == 1


def test_the_dispatcher_takes_back_dead_sends_and_gives_up_past_the_window(
    fast_webhooks: Any, user: Any, api: APIClient, receiver: Receiver, clean_redis: Any
) -> None:
    _register(api, receiver.url)
    services.subscription_cancel(subscription=_subscription(user))
    services.subscription_cancel(subscription=_subscription(user))
    dead, late = WebhookDelivery.objects.order_by("pk")
    past = timezone.now() - timedelta(seconds=5)
    # A worker died mid-send (lease over); another delivery's window is over.
    WebhookDelivery.objects.filter(pk=dead.pk).update(
        status=WebhookDelivery.Status.SENDING, lease_expires_at=past, published_at=past
    )
    WebhookDelivery.objects.filter(pk=late.pk).update(retry_until=past, published_at=None)
    assert sender.webhook_deliveries_dispatch() == 1
    dead.refresh_from_db()
    late.refresh_from_db()
    assert (dead.status, dead.attempts) == (WebhookDelivery.Status.PENDING, 0)
    assert late.status == WebhookDelivery.Status.FAILED
