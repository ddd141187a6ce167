"""Shared fixtures: API clients, the live chain wired into settings, real Celery workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.db.backends.postgresql.operations import DatabaseOperations
from rest_framework.test import APIClient

from tests.factories import UserFactory
from tests.infra import RpcProxy

pytest_plugins = ["tests.chain.fixtures"]

REPO_ROOT = Path(__file__).resolve().parent.parent
AUDIT_TABLE = "auditlog_logentry"


@pytest.fixture(scope="session", autouse=True)
def _flush_empties_the_audit_log() -> Iterator[None]:
    """Transactional tests end with ``flush``, a TRUNCATE of every table, which the audit
    log's trigger refuses (autopay migration 0005): in the test database only, the flush
    turns the table's triggers off for its own transaction (the table owner may; nothing else
    sees it, ALTER TABLE holds the table's lock until commit)."""
    original = DatabaseOperations.sql_flush

    def sql_flush(self: Any, style: Any, tables: Any, **kwargs: Any) -> list[str]:
        statements = list(original(self, style, tables, **kwargs))
        if AUDIT_TABLE in tables and statements:
            return [
                f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER USER",
                *statements,
                f"ALTER TABLE {AUDIT_TABLE} ENABLE TRIGGER USER",
            ]
        return statements

    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign]
    yield
    DatabaseOperations.sql_flush = original  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # PBKDF2 costs ~0.3 s per user; tests need a hash, not a strong one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def user(db: Any) -> Any:
    return UserFactory.create()


@pytest.fixture
def other_user(db: Any) -> Any:
    return UserFactory.create()


@pytest.fixture
def staff_user(db: Any) -> Any:
    return UserFactory.create(is_staff=True, is_superuser=True)


def _client_for(user: Any) -> APIClient:
    from autopay.api.tokens import issue_token

    client = APIClient()
    _, token = issue_token(user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.fixture
def api(user: Any) -> APIClient:
    return _client_for(user)


@pytest.fixture
def other_api(other_user: Any) -> APIClient:
    return _client_for(other_user)


@pytest.fixture
def staff_api(staff_user: Any) -> APIClient:
    return _client_for(staff_user)


@pytest.fixture
def anonymous_api() -> APIClient:
    return APIClient()


@pytest.fixture
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(django_settings.REDIS_URL)


@pytest.fixture
def clean_redis(redis_client: redis.Redis) -> redis.Redis:
    """An empty test Redis database (queue, relayer nonces, locks)."""
    redis_client.flushdb()
    return redis_client


# --- the live chain, wired into settings ----------------------------------------------------


@pytest.fixture(scope="session")
def relayer_key() -> str:
    from autopay.devtools.anvil import ANVIL_DEV_KEYS

    return ANVIL_DEV_KEYS[1]


@pytest.fixture(scope="session")
def chain_env(
    anvil: Any, token_address: str, relayer_key: str, multicall_address: str
) -> dict[str, str]:
    """Environment that points the engine (in-process or in a worker) at the test chain."""
    return {
        "CHAIN_RPC_URL": anvil.rpc_url,
        "CHAIN_ID": "31337",
        "CHAIN_NETWORK": "eip155:31337",
        "TOKEN_ADDRESS": token_address,
        "CHAIN_MULTICALL_ADDRESS": multicall_address,
        "RELAYER_PRIVATE_KEY": relayer_key,
        "AUTOPAY_PAYMENT_RAIL": "x402",
    }


@pytest.fixture
def engine_settings(settings: Any, chain_env: dict[str, str], clean_redis: Any) -> Any:
    """Django settings of this process pointed at the live chain and token."""
    settings.CHAIN_RPC_URL = chain_env["CHAIN_RPC_URL"]
    settings.CHAIN_ID = 31337
    settings.CHAIN_NETWORK = "eip155:31337"
    settings.TOKEN_ADDRESS = chain_env["TOKEN_ADDRESS"]
    settings.CHAIN_MULTICALL_ADDRESS = chain_env["CHAIN_MULTICALL_ADDRESS"]
    settings.RELAYER_PRIVATE_KEY = chain_env["RELAYER_PRIVATE_KEY"]
    settings.AUTOPAY_PAYMENT_RAIL = "x402"
    from autopay.chain import relayer

    relayer._relayers.clear()
    return settings


@pytest.fixture
def rpc(engine_settings: Any, anvil: Any) -> Iterator[RpcProxy]:
    """The engine reaches the chain through a proxy (tests.infra.RpcProxy) that the test takes
    down or makes drop a reply."""
    from autopay.chain import relayer

    proxy = RpcProxy(anvil.rpc_url).start()
    engine_settings.CHAIN_RPC_URL = proxy.url
    engine_settings.CHAIN_RPC_TIMEOUT_SECONDS = 2
    engine_settings.CHAIN_CONFIRMATION_TIMEOUT_SECONDS = 2
    relayer._relayers.clear()
    try:
        yield proxy
    finally:
        proxy.stop()
        relayer._relayers.clear()


@pytest.fixture
def funded_wallet(
    engine_settings: Any, user: Any, w3: Any, token_address: str, deployer: Any
) -> Callable[..., Any]:
    """A server-held payer wallet of ``user`` with ``amount_atomic`` tokens on the chain."""
    from autopay.devtools.contracts import mint
    from tests.factories import PayerWalletFactory

    def make(amount_atomic: int = 1_000 * 10**6, owner: Any = None) -> Any:
        wallet = PayerWalletFactory.create(owner=owner or user)
        if amount_atomic:
            mint(w3, token_address, deployer.key, str(wallet.address), amount_atomic)
        return wallet

    return make


@pytest.fixture
def paying_subscription(funded_wallet: Callable[..., Any], user: Any, token_address: str) -> Any:
    """An active subscription of ``user`` paid from a funded server-held wallet on the chain."""
    from decimal import Decimal

    from tests.factories import SubscriptionFactory, new_address

    def make(amount: str = "12.5", balance_atomic: int = 1_000 * 10**6) -> Any:
        wallet = funded_wallet(balance_atomic)
        return SubscriptionFactory.create(
            owner=user,
            wallet=wallet,
            payer_address=wallet.address,
            recipient_address=new_address(),
            token_address=token_address,
            amount=Decimal(amount),
        )

    return make


# --- real Celery workers ----------------------------------------------------------------------


class WorkerProcess:
    """A real `celery worker` subprocess against the test database, Redis and chain."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        concurrency: int,
        name: str,
        log_path: Path,
        args: Sequence[str] = (),
    ) -> None:
        self.env = env
        self.concurrency = concurrency
        self.name = name
        self.log_path = log_path
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            django_settings.CELERY_TASK_DEFAULT_QUEUE,
            "-c",
            str(self.concurrency),
            "--pool",
            "prefork",
            "-n",
            f"{self.name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if " ready." in self.log_path.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker (parent and pool children) at once, like a crash."""
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def worker_env(transactional_db: Any, chain_env: dict[str, str]) -> dict[str, str]:
    """The environment of a worker: this process's settings, the test database's name."""
    from django.db import connection

    db = connection.settings_dict
    user = db["USER"] or "postgres"
    host = db["HOST"] or "127.0.0.1"
    database_url = f"postgres://{user}@{host}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        **chain_env,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONUNBUFFERED": "1",
    }
    return env


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], clean_redis: Any, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes; all are stopped (or killed) after the test."""
    started: list[WorkerProcess] = []

    def start(
        concurrency: int = 1, extra_env: dict[str, str] | None = None, args: Sequence[str] = ()
    ) -> WorkerProcess:
        name = f"test-{uuid.uuid4().hex[:8]}"
        worker = WorkerProcess(
            {**worker_env, **(extra_env or {})},
            concurrency=concurrency,
            name=name,
            log_path=tmp_path / f"{name}.log",
            args=args,
        )
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with a clear message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
