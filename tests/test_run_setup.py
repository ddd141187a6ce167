"""The set-up path of the README's run command (`bin/run --setup-only`) on a fresh SQLite
database: local chain, token, migrations and demo data, run twice."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from autopay.beat import periodic_specs
from autopay.devtools.anvil import free_port, is_rpc_alive

REPO_ROOT = Path(__file__).resolve().parent.parent
# The test settings' database and (unreachable) chain are not bin/run's: it picks its own.
_NOT_INHERITED = {"DATABASE_URL", "CHAIN_RPC_URL"}

pytestmark = pytest.mark.chain


def _run_setup(env: dict[str, str]) -> dict[str, Any]:
    completed = subprocess.run(
        ["bash", str(REPO_ROOT / "bin" / "run"), "--setup-only"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_run_setup_creates_the_demo_on_fresh_sqlite_and_can_run_twice(tmp_path: Path) -> None:
    queue = redis.Redis.from_url(settings.REDIS_URL)
    queue.delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    port2 = free_port()
    env.update(
        {
            "AUTOPAY_VAR_DIR": str(tmp_path),
            "ANVIL_PORT": str(port),
            "ANVIL2_PORT": str(port2),
            "PORT": "0",
        }
    )

    first = _run_setup(env)

    database = tmp_path / "autopay.sqlite3"
    assert database.exists(), "the run command uses SQLite when DATABASE_URL is unset"
    with sqlite3.connect(database) as connection:
        operator = connection.execute(
            "SELECT is_staff, is_superuser FROM auth_user WHERE username = 'operator'"
        ).fetchone()
        demo_user = connection.execute(
            "SELECT id, is_staff, is_superuser FROM auth_user WHERE username = ?",
            (first["user"],),
        ).fetchone()
        owners = connection.execute(
            "SELECT DISTINCT owner_id FROM subscriptions_subscription"
        ).fetchall()
        wallets = connection.execute("SELECT COUNT(*) FROM autopay_payerwallet").fetchone()[0]
        subscriptions = connection.execute(
            "SELECT COUNT(*) FROM subscriptions_subscription WHERE status = 'active'"
        ).fetchone()[0]
        jobs = connection.execute(
            "SELECT COUNT(*) FROM jobs_job WHERE status = 'waiting'"
        ).fetchone()[0]
        beat_rows = connection.execute(
            "SELECT COUNT(*) FROM django_celery_beat_periodictask WHERE task LIKE 'autopay.%'"
        ).fetchone()[0]
        modes = connection.execute(
            "SELECT mode, resource_url != '', COUNT(*) FROM subscriptions_subscription "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        signed = connection.execute(
            "SELECT COUNT(*) FROM subscriptions_presignedauthorization"
        ).fetchone()[0]
        networks = connection.execute(
            "SELECT network, COUNT(*) FROM subscriptions_subscription GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert operator == (1, 1)
    assert demo_user is not None and demo_user[1:] == (0, 0), "the printed token is not staff's"
    assert owners == [(demo_user[0],)], "the demo data is the demo user's"
    assert wallets == 2
    # Five custodial (one on the second chain), one pre-signed (12 periods signed by its
    # payer), one paid over x402 HTTP.
    assert subscriptions == 7
    assert modes == [("custodial", 0, 5), ("custodial", 1, 1), ("presigned", 0, 1)]
    assert networks == [("eip155:31337", 6), ("eip155:31338", 1)]
    assert signed == 12
    assert jobs == 7 == len(first["queued_jobs"])
    assert beat_rows == len(periodic_specs())
    assert queue.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 7, "the demo jobs are published"
    assert first["token"] and first["password"]
    assert not is_rpc_alive(f"http://127.0.0.1:{port}"), "the chain it started is stopped"
    assert not is_rpc_alive(f"http://127.0.0.1:{port2}"), "so is the second one"

    # The low-balance demo payment fails (as it does once a worker runs): a restart must not
    # queue it again (dunning retries it on its schedule).
    with sqlite3.connect(database) as connection:
        connection.execute(
            "UPDATE jobs_job SET status = 'failed', error_code = 'insufficient_balance' "
            "WHERE subscription_id IN (SELECT id FROM subscriptions_subscription "
            "WHERE service_name LIKE '%low balance%')"
        )
        connection.execute(
            "UPDATE subscriptions_payment SET status = 'failed' WHERE subscription_id IN "
            "(SELECT id FROM subscriptions_subscription WHERE service_name LIKE '%low balance%')"
        )
    second = _run_setup(env)

    assert second["token"] == first["token"]
    assert second["password"] == first["password"], "development secrets are reused"
    assert second["wallets"] == first["wallets"]
    assert second["queued_jobs"] == [], "demo periods are not queued twice, nor the failure"
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM jobs_job").fetchone()[0] == 7
        assert (
            connection.execute("SELECT COUNT(*) FROM subscriptions_subscription").fetchone()[0] == 7
        )
    queue.delete(settings.CELERY_TASK_DEFAULT_QUEUE)


def test_run_takes_a_free_port_where_the_default_is_taken() -> None:
    """What bin/run does with each default port (8000, 8545, 8546, 8402): kept when free,
    replaced by a free one when something (a second checkout's bin/run) listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        free = free_port()
        completed = subprocess.run(
            [sys.executable, "-m", "autopay.devtools.run_env", "ports", f"A={busy}", f"B={free}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    chosen = dict(line.split("=") for line in completed.stdout.split())
    assert int(chosen["A"]) not in (busy, free, 0)
    assert chosen["B"] == str(free)
