"""The API fuzzed against its own OpenAPI schema (schemathesis).

Every operation of ``/api/schema/`` gets generated requests, valid and invalid (schemathesis'
positive and negative modes), sent in-process to the real WSGI application
(``config.wsgi.application``: middleware, DRF, the test PostgreSQL and Redis) with real
hashed tokens, as the owner of real data, as another user and anonymously. A request fails
the test when the answer is a 5xx or does not match the schema: an undocumented status code
or content type, undocumented headers' shape or a body that the schema does not describe.

Beyond the schema: half the generated requests also carry headers a client controls and the
schema cannot describe (``HOSTILE_HEADERS``: control characters and NUL in
``Idempotency-Key``, forged ``X-Forwarded-*``, over-long values), and integer path ids are
also drawn up to 2^64 (past PostgreSQL's integer and bigint), so neither reaches a 5xx.

Bounded for CI: a fixed seed, ``EXAMPLES_PER_OPERATION`` fuzzed examples per operation (plus
the deterministic boundary cases of schemathesis' coverage phase) and no example database, so
every run sends the same requests; the whole module takes well under a minute.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import hypothesis
import pytest
import schemathesis
from django.conf import settings as django_settings
from django.utils import timezone
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, CheckFunction, Response
from schemathesis import checks as builtin_checks

from autopay.api.tokens import issue_token
from autopay.devtools.anvil import free_port
from subscriptions.models import Payment, Subscription
from subscriptions.services import payment_build
from subscriptions.webhooks.models import EventType, WebhookDelivery
from subscriptions.webhooks.services import webhook_endpoint_create, webhook_event_record
from tests.factories import (
    PayerWalletFactory,
    SubscriptionFactory,
    UserFactory,
    failed_job,
    new_address,
)

EXAMPLES_PER_OPERATION = 20
SEED = 20_260_909

# Headers a client may send whatever the schema says: the values schemathesis never draws
# (it keeps generated headers RFC-valid), and the proxy headers nothing here trusts.
HOSTILE_HEADERS: dict[str, list[str]] = {
    "Idempotency-Key": ["\x00", "key\x00tail", "\x07bell", "tab\tinside", "x" * 256, "é" * 10],
    "X-Forwarded-Proto": ["https", "https, http", "\x00"],
    "X-Forwarded-For": ["127.0.0.1", "::1, 10.0.0.1", "not an address"],
    "X-Forwarded-Host": ["evil.example", "localhost:1"],
}
# Path ids at the edges of PostgreSQL's integer types, and past them.
BIG_IDS = [2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64]

# Without a chain, the balance answers the 503 its schema documents.
_CHAIN_READS = {("GET", "/api/wallets/{id}/balance/")}


def not_a_server_error(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """No 5xx, except a chain read's documented 503 when no chain RPC answers."""
    if (case.method.upper(), case.path) in _CHAIN_READS and response.status_code == 503:
        error = str(response.json().get("error", ""))
        # The reason, naming the network: its RPC unreachable, or no token there.
        if "network eip155:" in error:
            return None
    return builtin_checks.not_a_server_error(ctx, response, case)


# A server error, then conformance of the answer to the schema: status code, content type,
# headers and body.
RESPONSE_CHECKS: list[CheckFunction] = [
    not_a_server_error,
    builtin_checks.status_code_conformance,
    builtin_checks.content_type_conformance,
    builtin_checks.response_headers_conformance,
    builtin_checks.response_schema_conformance,
]

# Operations that revoke the token they are sent with: each request gets a fresh token.
_REVOKING = {("POST", "/api/auth/logout"), ("DELETE", "/api/auth/tokens/{prefix}/")}
# Subscription fields a random value almost never passes (checksummed addresses, bounded
# amounts and dates): half the generated bodies get valid ones, to reach 201/200 answers.
_SUBSCRIPTION_BODIES = {
    ("POST", "/api/subscriptions/"),
    ("PUT", "/api/subscriptions/{id}/"),
    ("PATCH", "/api/subscriptions/{id}/"),
}
_HARD_FIELDS = ("payer_address", "token_address", "network", "billing_anchor")
PASSWORD = "correct-horse-battery"  # tests.factories.UserFactory's
PUBLIC_WEBHOOK_URL = "https://93.184.215.14/hooks"  # never called: no worker runs here


@dataclass
class World:
    """Real rows the fuzzer can name in paths and bodies, and the identity it fuzzes as."""

    user: Any = None
    token: str | None = None
    subscription_ids: list[int] = field(default_factory=list)
    # Only these are canceled (for good) or triggered, whatever the other operations did to
    # the subscriptions above: every run reaches a cancellation and a queued payment.
    cancelable_ids: list[int] = field(default_factory=list)
    triggerable_ids: list[int] = field(default_factory=list)
    payment_ids: list[int] = field(default_factory=list)
    wallet_ids: list[int] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    token_prefixes: list[str] = field(default_factory=list)
    webhook_endpoint_ids: list[int] = field(default_factory=list)
    webhook_delivery_ids: list[int] = field(default_factory=list)
    recipient: str = field(default_factory=new_address)
    owner_username: str = ""

    def headers(self, method: str, path: str) -> dict[str, str]:
        if self.user is None:
            return {}
        token = self.token
        if (method.upper(), path) in _REVOKING:
            _, token = issue_token(self.user)
        return {"Authorization": f"Token {token}"}

    def real_ids(self, path: str) -> dict[str, list[Any]]:
        """Existing values for the path parameters of ``path``."""
        if path.startswith("/api/jobs/subscription/"):
            return {"subscription_id": [str(pk) for pk in self.subscription_ids]}
        if path.endswith("/cancel/"):
            return {"id": list(self.cancelable_ids)}
        if path.endswith("/trigger-payment/"):
            return {"id": list(self.triggerable_ids)}
        if path.startswith("/api/webhook-endpoints/{endpoint_pk}/"):
            return {"endpoint_pk": self.webhook_endpoint_ids, "id": self.webhook_delivery_ids}
        by_prefix: dict[str, list[Any]] = {
            "/api/subscriptions/": self.subscription_ids,
            "/api/payments/": self.payment_ids,
            "/api/wallets/": self.wallet_ids,
            "/api/jobs/": self.job_ids,
            "/api/webhook-endpoints/": self.webhook_endpoint_ids,
        }
        for prefix, ids in by_prefix.items():
            if path.startswith(prefix):
                return {"id": list(ids)}
        if path.startswith("/api/auth/tokens/"):
            return {"prefix": list(self.token_prefixes)}
        return {}

    def valid_body(self, method: str, path: str, body: Any) -> Any:
        """``body`` with valid values in the fields a generated value rarely gets right."""
        if not isinstance(body, dict):
            return None
        if (method.upper(), path) == ("POST", "/api/auth/tokens/"):
            return {**body, "username": self.owner_username, "password": PASSWORD}
        if path.startswith("/api/webhook-endpoints/") and "url" in body:
            # A public address (no DNS): the SSRF check passes, the endpoint is created.
            return {**body, "url": PUBLIC_WEBHOOK_URL}
        if (method.upper(), path) not in _SUBSCRIPTION_BODIES:
            return None
        valid = {"wallet": self.wallet_ids[0], "recipient_address": self.recipient, "amount": "9.5"}
        fixed = {key: value for key, value in body.items() if key not in _HARD_FIELDS}
        if method.upper() == "POST":
            return {**fixed, **valid}
        return {**fixed, **{key: value for key, value in valid.items() if key in body}}


def _owner_data() -> tuple[Any, World]:
    """A user with a wallet, subscriptions in several states, payments and jobs."""
    owner = UserFactory.create()
    wallet = PayerWalletFactory.create(owner=owner)
    common = {
        "owner": owner,
        "wallet": wallet,
        "payer_address": wallet.address,
        "token_address": django_settings.TOKEN_ADDRESS,
        "network": django_settings.CHAIN_NETWORK,
        "billing_anchor": timezone.now() - timedelta(days=40),
    }
    active = SubscriptionFactory.create(**common, amount=Decimal("12.50"))
    past_due = SubscriptionFactory.create(**common, status=Subscription.Status.PAST_DUE)
    paused = SubscriptionFactory.create(**common, status=Subscription.Status.PAUSED)
    canceled = SubscriptionFactory.create(
        **common, status=Subscription.Status.CANCELED, auto_pay_enabled=False
    )
    to_cancel = SubscriptionFactory.create(**common)
    to_trigger = SubscriptionFactory.create(**common)
    completed = payment_build(subscription=active, index=0)
    completed.status = Payment.Status.COMPLETED
    completed.transaction_hash = "0x" + "ab" * 32
    completed.block_number = 1
    completed.completed_at = timezone.now() - timedelta(days=10)
    completed.save()
    job = failed_job(past_due)
    spare_token, _ = issue_token(owner)
    endpoint, _ = webhook_endpoint_create(owner=owner, url=PUBLIC_WEBHOOK_URL)
    webhook_event_record(owner_id=owner.pk, type=EventType.JOB_FAILED, data={"jobId": "1"})
    world = World(
        user=owner,
        owner_username=owner.username,
        subscription_ids=[active.pk, past_due.pk, paused.pk, canceled.pk],
        cancelable_ids=[to_cancel.pk, canceled.pk],
        triggerable_ids=[to_trigger.pk, canceled.pk],
        payment_ids=[completed.pk, job.payment_id],
        wallet_ids=[wallet.pk],
        job_ids=[str(job.pk)],
        token_prefixes=[spare_token.token_key],
        webhook_endpoint_ids=[endpoint.pk],
        webhook_delivery_ids=list(WebhookDelivery.objects.values_list("pk", flat=True)),
    )
    return owner, world


def _fuzz_settings(settings: Any) -> None:
    """No throttling (counters of this run only); a chain RPC that refuses connections."""
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {scope: "1000000/min" for scope in rates},
    }
    settings.CACHES = {
        "default": {**django_settings.CACHES["default"], "KEY_PREFIX": f"fz-{uuid.uuid4().hex}"}
    }
    settings.CHAIN_RPC_URL = f"http://127.0.0.1:{free_port()}"


def _load_schema(request: pytest.FixtureRequest, world: World) -> Any:
    """The schema as the app serves it, bound to the app (in-process WSGI), bounded."""
    from config.wsgi import application

    # schemathesis 4 renames the running test after each operation through pytest's private
    # ``Node._nodeid``, which pytest 9.2 no longer has; give it one to write to.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    loaded = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    loaded.config.seed = SEED
    loaded.config.generation.update(
        max_examples=EXAMPLES_PER_OPERATION, database="none", unique_inputs=True
    )

    @loaded.hook("flatmap_path_parameters")
    def real_rows(context: Any, path_parameters: dict[str, Any] | None) -> Any:
        """Half the time, name rows that exist (the fuzzer's ids almost never do); integer
        ids are also drawn up to 2^64."""
        parameters = path_parameters or {}
        known = world.real_ids(context.operation.path)
        choices = [st.just(path_parameters)]
        numbers = [name for name, value in parameters.items() if isinstance(value, int)]
        if numbers:
            big = st.sampled_from(BIG_IDS) | st.integers(min_value=2**31, max_value=2**64)
            huge = st.fixed_dictionaries({name: big for name in numbers})
            choices.append(huge.map(lambda ids: {**parameters, **ids}))
        names = [name for name in parameters if known.get(name)]
        if names:
            real = st.fixed_dictionaries({name: st.sampled_from(known[name]) for name in names})
            choices.append(real.map(lambda rows: {**parameters, **rows}))
        return st.one_of(*choices)

    @loaded.hook("flatmap_headers")
    def hostile_headers(context: Any, headers: dict[str, Any] | None) -> Any:
        """Half the time, one header as a hostile client would send it."""
        extra = st.sampled_from(sorted(HOSTILE_HEADERS)).flatmap(
            lambda name: st.sampled_from(HOSTILE_HEADERS[name]).map(lambda value: {name: value})
        )
        return st.one_of(st.just(headers), extra.map(lambda header: {**(headers or {}), **header}))

    @loaded.hook("flatmap_body")
    def valid_fields(context: Any, body: Any) -> Any:
        operation = context.operation
        valid = world.valid_body(operation.method, operation.path, body)
        return st.just(body) if valid is None else st.sampled_from([body, valid])

    return loaded


@pytest.fixture(params=["owner", "stranger", "anonymous"])
def world(
    request: pytest.FixtureRequest, transactional_db: Any, settings: Any, clean_redis: Any
) -> World:
    """Committed data (the app runs outside any test transaction), seen as one identity:
    its owner, another user with a wallet of their own, or nobody."""
    _fuzz_settings(settings)
    owner, world = _owner_data()
    if request.param == "owner":
        world.token = issue_token(owner)[1]
    elif request.param == "stranger":
        stranger = UserFactory.create()
        PayerWalletFactory.create(owner=stranger)
        world.user = stranger
        world.token = issue_token(stranger)[1]
    else:
        world.user = None
    return world


@pytest.fixture
def api_schema(request: pytest.FixtureRequest, world: World) -> Any:
    return _load_schema(request, world)


schema = schemathesis.pytest.from_fixture("api_schema")


@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    # The fixtures hold the data for every example; requests to PostgreSQL are slow for
    # Hypothesis' taste.
    suppress_health_check=[
        hypothesis.HealthCheck.function_scoped_fixture,
        hypothesis.HealthCheck.too_slow,
        hypothesis.HealthCheck.filter_too_much,
    ],
)
@schema.parametrize()
def test_api_answers_as_its_schema_says(case: Case, world: World) -> None:
    case.call_and_validate(headers=world.headers(case.method, case.path), checks=RESPONSE_CHECKS)


@pytest.mark.chain
def test_wallet_balance_on_a_live_chain_answers_as_its_schema_says(
    request: pytest.FixtureRequest,
    transactional_db: Any,
    settings: Any,
    funded_wallet: Any,
    user: Any,
) -> None:
    """The fuzz run has no chain (503); with one, the balance's 200 matches its schema too."""
    rpc_url = settings.CHAIN_RPC_URL
    _fuzz_settings(settings)
    settings.CHAIN_RPC_URL = rpc_url
    wallet = funded_wallet(12_500_000)
    world = World(user=user, token=issue_token(user)[1], wallet_ids=[wallet.pk])
    operation = _load_schema(request, world)["/api/wallets/{id}/balance/"]["GET"]
    case = operation.Case(path_parameters={"id": wallet.pk})
    response = case.call_and_validate(
        headers=world.headers(case.method, case.path), checks=RESPONSE_CHECKS
    )
    assert response.status_code == 200, response.text
    assert response.json()["balanceAtomic"] == "12500000"
