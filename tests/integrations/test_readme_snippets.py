"""The README's snippets run: the webhook verification snippets (Python and Node) accept a real
signed delivery from the engine and refuse a tampered one; the filter examples find what they
say. The documentation stays true."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from subscriptions.models import Payment
from subscriptions.webhooks.delivery import event_payload, signed_headers
from subscriptions.webhooks.models import EventType
from subscriptions.webhooks.services import (
    webhook_endpoint_create,
    webhook_endpoint_secrets,
    webhook_event_record,
)
from tests.factories import SubscriptionFactory, failed_job

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def _block(language: str, marker: str) -> str:
    for match in re.finditer(rf"```{language}\n(.*?)```", README.read_text(), re.DOTALL):
        if marker in match.group(1):
            return match.group(1)
    raise AssertionError(f"no {language} block with {marker!r} in the README")


@pytest.fixture
def delivery(user: Any) -> dict[str, Any]:
    endpoint, secret = webhook_endpoint_create(owner=user, url="https://93.184.215.14/hooks")
    event = webhook_event_record(
        owner_id=user.pk, type=EventType.PAYMENT_SUCCEEDED, data={"id": 1, "amount": "9.99"}
    )
    assert event is not None
    now = timezone.now()
    body = event_payload(event)
    headers = signed_headers(
        message_id=event.public_id,
        payload=body,
        secrets=webhook_endpoint_secrets(endpoint=endpoint, now=now),
        at=now,
    )
    return {"secret": secret, "headers": headers, "body": body.decode(), "id": event.public_id}


def test_the_python_snippet_verifies_a_delivery(delivery: dict[str, Any]) -> None:
    handled: list[tuple[str, Any]] = []
    scope: dict[str, Any] = {
        "already_handled": lambda event_id: False,
        "handle": lambda kind, data: handled.append((kind, data)),
    }
    code = _block("python", "webhook.verify(").replace('"whsec_…"', repr(delivery["secret"]))
    exec(compile(code, "README.md", "exec"), scope)
    receive = scope["receive"]
    assert receive(delivery["body"].encode(), delivery["headers"]) == 200
    assert handled == [("payment.succeeded", {"id": 1, "amount": "9.99"})]
    assert receive(delivery["body"].replace("9.99", "99.9").encode(), delivery["headers"]) == 400


def test_the_node_snippet_verifies_a_delivery(delivery: dict[str, Any], tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (bin/test installs it with the npm packages)")
    script = tmp_path / "verify.mjs"
    script.write_text(
        _block("js", "function verifyWebhook")
        + """
const input = JSON.parse(process.argv[2]);
console.log(verifyWebhook(input.secret, input.headers, input.body).id);
try { verifyWebhook(input.secret, input.headers, input.body.replace("9.99", "99.9")); }
catch (error) { console.log(error.message); }
"""
    )
    result = subprocess.run(
        [node, str(script), json.dumps(delivery)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [delivery["id"], "bad signature"]


def _curl_paths(marker: str) -> list[str]:
    """The ``$API/...`` paths (with their query) of the curl lines of the bash block."""
    return re.findall(r'"\$API(/[^"]+)"', _block("bash", marker))


@pytest.mark.django_db
def test_the_filter_examples_find_what_they_say(api: APIClient, user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user, service_name="Pro plan")
    failed = failed_job(subscription, code="insufficient_balance").payment
    paid = failed_job(subscription, index=1, code="rpc_unavailable").payment
    Payment.objects.filter(pk=paid.pk).update(
        status=Payment.Status.COMPLETED, error_code="", completed_at=timezone.now()
    )
    failures, by_amount, export = _curl_paths("error_code=insufficient_balance")

    found = api.get(f"/api{failures}")
    assert found.status_code == 200, found.content
    assert [row["id"] for row in found.json()["results"]] == [failed.pk]
    searched = api.get(f"/api{by_amount}")
    assert {row["id"] for row in searched.json()["results"]} == {failed.pk, paid.pk}
    exported: Any = api.get(f"/api{export}")
    assert exported.status_code == 200
    assert exported["Content-Type"].startswith("text/csv")
    assert len(b"".join(exported.streaming_content).decode().strip().splitlines()) == 3


@pytest.mark.django_db
def test_the_documented_choice_error_is_the_one_answered(api: APIClient) -> None:
    documented = re.search(
        r"\(`(source: bogus is not one of the valid values:\s.*?)`\)", README.read_text(), re.DOTALL
    )
    assert documented is not None
    answer = api.get("/api/jobs/", {"source": "bogus"})
    assert answer.status_code == 400
    assert answer.json()["error"] == " ".join(documented.group(1).split())
