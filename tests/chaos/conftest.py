"""The chaos suite's stack: a complete auto-pay of its own, built once per session: its own
PostgreSQL cluster and Redis server (AOF) that the tests stop, kill and restart, its own anvil
chain behind an RPC proxy the tests take down or hold, real Celery workers and beats. The
machine's own PostgreSQL and Redis are never touched.

Each scenario records a row (scenario, payments, completed, failed, charges per payment, time
to recover); the table is printed at the end of the run (and written to
``$AUTOPAY_CHAOS_REPORT`` when set).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings as django_settings
from web3 import Web3
from web3.types import RPCEndpoint

from autopay.chain.abi import TRANSFER_TOPIC
from autopay.devtools.anvil import ANVIL_DEV_KEYS, AnvilProcess, free_port
from autopay.devtools.contracts import deploy_token
from tests.conftest import REPO_ROOT, WorkerProcess
from tests.infra import PostgresCluster, RedisServer, RpcProxy, postgres_bin

RESULTS: list[dict[str, Any]] = []


@dataclass
class Load:
    """The subscriptions of one scenario (one payment each)."""

    subscriptions: list[dict[str, Any]]

    @property
    def ids(self) -> list[int]:
        return [row["id"] for row in self.subscriptions]

    def __add__(self, other: Load) -> Load:
        return Load(self.subscriptions + other.subscriptions)


class BeatProcess:
    def __init__(self, env: dict[str, str], directory: Path) -> None:
        self.env = env
        self.log_path = directory / f"beat-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BeatProcess:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "-l",
                "INFO",
                "--scheduler",
                "django_celery_beat.schedulers:DatabaseScheduler",
                "--pidfile=",
            ],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


class ChaosStack:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.postgres = PostgresCluster()
        self.redis = RedisServer(directory / "redis")
        self.anvil = AnvilProcess(port=free_port())
        self.proxy: RpcProxy
        self.w3: Web3
        self.token_address = ""
        self.env: dict[str, str] = {}
        self.workers: list[WorkerProcess] = []
        self.beats: list[BeatProcess] = []

    # --- set-up --------------------------------------------------------------------------

    def start(self) -> ChaosStack:
        self.postgres.init().start()
        database_url = self.postgres.create_database("autopay")
        self.redis.start()
        self.anvil.start()
        self.w3 = Web3(Web3.HTTPProvider(self.anvil.rpc_url, request_kwargs={"timeout": 30}))
        self.token_address = deploy_token(self.w3, ANVIL_DEV_KEYS[0])
        self.proxy = RpcProxy(self.anvil.rpc_url).start()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url,
            "REDIS_URL": self.redis.url(0),
            "CELERY_BROKER_URL": self.redis.url(0),
            "CELERY_QUEUE": django_settings.CELERY_TASK_DEFAULT_QUEUE,
            "CHAIN_RPC_URL": self.proxy.url,
            "CHAIN_ID": "31337",
            "CHAIN_NETWORK": "eip155:31337",
            "TOKEN_ADDRESS": self.token_address,
            "RELAYER_PRIVATE_KEY": ANVIL_DEV_KEYS[1],
            "AUTOPAY_PAYMENT_RAIL": "x402",
            "CHAIN_RPC_TIMEOUT_SECONDS": "3",
            # Deeper than the chain rollback of the reorg scenario (a rollback within finality).
            "CHAIN_FINALITY_BLOCKS": "100",
            "AUTOPAY_RECOVERY_INTERVAL_SECONDS": "3",
            "LOG_LEVEL": "INFO",
        }
        migrated = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        return self

    def stop(self) -> None:
        self.stop_processes()
        self.proxy.stop()
        self.anvil.stop()
        self.redis.stop()
        self.postgres.destroy()

    # --- processes -----------------------------------------------------------------------

    def start_worker(self, concurrency: int = 2, **extra: str) -> WorkerProcess:
        worker = WorkerProcess(
            {**self.env, **extra},
            concurrency=concurrency,
            name=f"chaos-{uuid.uuid4().hex[:6]}",
            log_path=self.directory / f"worker-{len(self.workers)}.log",
        )
        self.workers.append(worker)
        return worker.start(timeout=90)

    def start_beat(self) -> BeatProcess:
        beat = BeatProcess(self.env, self.directory).start()
        self.beats.append(beat)
        return beat

    def stop_processes(self) -> None:
        for worker in self.workers:
            worker.stop()
        for beat in self.beats:
            beat.stop()
        self.workers, self.beats = [], []

    def tool(self, *args: str) -> dict[str, Any]:
        """``tests.chaos.tool`` inside the stack (straight to anvil, not through the proxy)."""
        completed = subprocess.run(
            [sys.executable, "-m", "tests.chaos.tool", *args],
            cwd=REPO_ROOT,
            env={**self.env, "CHAIN_RPC_URL": self.anvil.rpc_url, "LOG_LEVEL": "WARNING"},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        return dict(json.loads(completed.stdout.strip().splitlines()[-1]))

    def seed(self, count: int, *, trigger: bool = True) -> Load:
        args = ["seed", "--count", str(count)]
        if not trigger:
            args.append("--no-trigger")
        return Load(self.tool(*args)["subscriptions"])

    def trigger(self, load: Load) -> dict[str, str]:
        return dict(self.tool("trigger", *map(str, load.ids))["jobs"])

    # --- the database and the chain, as they are -----------------------------------------

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.postgres.url("autopay"), connect_timeout=3) as connection:
            return list(connection.execute(sql, params).fetchall())

    def rpc(self, method: str, *params: Any) -> Any:
        return self.w3.provider.make_request(RPCEndpoint(method), list(params)).get("result")

    def open_jobs(self, load: Load) -> int:
        rows = self.query(
            "SELECT count(*) FROM jobs_job WHERE subscription_id = ANY(%s) "
            "AND status IN ('waiting', 'active', 'delayed')",
            load.ids,
        )
        return int(rows[0][0])

    def payments(self, load: Load) -> dict[int, str]:
        """Each subscription's payment status (asserting one payment per subscription)."""
        rows = self.query(
            "SELECT subscription_id, status FROM subscriptions_payment "
            "WHERE subscription_id = ANY(%s)",
            load.ids,
        )
        assert len(rows) == len({row[0] for row in rows}), "one payment per period"
        return {int(subscription): status for subscription, status in rows}

    def finished(self, load: Load) -> bool:
        try:
            statuses = self.payments(load)
            return self.open_jobs(load) == 0 and all(
                statuses.get(subscription_id) in ("completed", "failed")
                for subscription_id in load.ids
            )
        except psycopg.Error:
            return False

    def wait_finished(self, load: Load, timeout: float) -> float:
        """Seconds until every job of the load is finished and every payment decided."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.finished(load):
                return time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError(
            f"load not finished within {timeout}s: {self.open_jobs(load)} open job(s), "
            f"payments {sorted(self.payments(load).items())}\n{self.logs_tail()}"
        )

    def transfers_to(self) -> dict[str, list[int]]:
        """Token Transfer events on the canonical chain, by recipient (the chain's own word)."""
        logs = self.w3.eth.get_logs(
            {
                "address": Web3.to_checksum_address(self.token_address),
                "fromBlock": 0,
                "toBlock": "latest",
                "topics": [TRANSFER_TOPIC],
            }
        )
        found: dict[str, list[int]] = {}
        for log in logs:
            recipient = "0x" + bytes(log["topics"][2])[-20:].hex()
            found.setdefault(recipient.lower(), []).append(int(bytes(log["data"]).hex(), 16))
        return found

    def verify(self, scenario: str, load: Load, recovered_in: float | None, **notes: Any) -> None:
        """Exactly one transfer (of the right amount) per completed payment, none for a failed
        one, no job left open; then the scenario's row for the table."""
        statuses = self.payments(load)
        transfers = self.transfers_to()
        charges = []
        for row in load.subscriptions:
            received = transfers.get(row["recipient"].lower(), [])
            status = statuses[row["id"]]
            if status == "completed":
                assert received == [row["amount_atomic"]], (row, status, received)
            else:
                assert status == "failed" and received == [], (row, status, received)
            charges.append(len(received))
        assert self.open_jobs(load) == 0
        completed = sum(1 for status in statuses.values() if status == "completed")
        RESULTS.append(
            {
                "scenario": scenario,
                "payments": len(load.ids),
                "completed": completed,
                "failed": len(load.ids) - completed,
                "charges": f"{min(charges)}-{max(charges)}"
                if min(charges) != max(charges)
                else str(charges[0]),
                "recovered_in": None if recovered_in is None else round(recovered_in, 1),
                **notes,
            }
        )

    def logs_tail(self) -> str:
        parts = []
        for path in sorted(self.directory.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)[-6000:]


@pytest.fixture(scope="session")
def chaos_stack() -> Iterator[ChaosStack]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    try:
        postgres_bin("initdb")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    directory = Path(tempfile.mkdtemp(prefix="autopay-chaos-"))
    stack = ChaosStack(directory).start()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def stack(chaos_stack: ChaosStack) -> Iterator[ChaosStack]:
    """The stack for one scenario: a beat running; every process it starts stopped after."""
    chaos_stack.proxy.release()
    chaos_stack.proxy.down = False
    chaos_stack.rpc("evm_setAutomine", True)
    chaos_stack.start_beat()
    try:
        yield chaos_stack
    finally:
        chaos_stack.proxy.release()
        chaos_stack.proxy.down = False
        chaos_stack.rpc("evm_setAutomine", True)
        chaos_stack.stop_processes()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    header = "| scenario | payments | completed | failed | charges per payment | recovered in (s) |"
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for row in RESULTS:
        recovered = "-" if row["recovered_in"] is None else f"{row['recovered_in']}"
        lines.append(
            f"| {row['scenario']} | {row['payments']} | {row['completed']} | {row['failed']} "
            f"| {row['charges']} | {recovered} |"
        )
    terminalreporter.write_sep("=", "chaos suite")
    for line in lines:
        terminalreporter.write_line(line)
    report = os.environ.get("AUTOPAY_CHAOS_REPORT")
    if report:
        Path(report).write_text("\n".join(lines) + "\n" + json.dumps(RESULTS, indent=1) + "\n")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "chaos: the chaos suite (tests/chaos/): a private stack whose services it kills"
    )
