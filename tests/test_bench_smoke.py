"""The benchmarks still run: each ``bench/`` script as a subprocess at a tiny size, failing when
it fails (its exit code) or prints no result. A benchmark nobody runs rots silently; this finds
it on the next test run instead of the day someone needs its figures.

Each script gets a database of its own (the test database's name + ``_bench``, created by the
script, dropped afterwards: the scripts truncate their tables), a private Redis server
(``bench/settle.py`` flushes its Redis database) and, for ``bench/settle.py``, the anvil chain
it starts itself. The development database and the machine's Redis are never touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from tests.infra import RedisServer

pytestmark = [pytest.mark.chain, pytest.mark.worker]

REPO_ROOT = Path(__file__).resolve().parent.parent
# Generous for a loaded 2-core machine; each script takes about 20-45 s here.
RUN_TIMEOUT_SECONDS = 150


@pytest.fixture(scope="module")
def bench_env(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """The scripts' environment: their own database and Redis server, a queue of their own."""
    settings_dict = connection.settings_dict
    # Named after the test database (test_<name>_bench), never the development database.
    name = f"test_{str(settings_dict['NAME']).removeprefix('test_')}_bench"
    user = settings_dict["USER"] or "postgres"
    host = settings_dict["HOST"] or "127.0.0.1"
    port = int(settings_dict["PORT"] or 5432)
    redis_server = RedisServer(tmp_path_factory.mktemp("bench-redis"), appendonly=False).start()
    broker = redis_server.url(db=1)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"postgres://{user}@{host}:{port}/{name}",
        "REDIS_URL": broker,
        "CELERY_BROKER_URL": broker,
        "CELERY_QUEUE": "autopay-bench-smoke",
        "PYTHONUNBUFFERED": "1",
    }
    try:
        yield env
    finally:
        redis_server.stop()
        with psycopg.connect(
            host=host, port=port, user=user, dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(script: str, args: list[str], env: dict[str, str]) -> str:
    completed = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"bench/{script} exited {completed.returncode}:\n{output}"
    return completed.stdout


def test_the_scan_benchmark_runs(bench_env: dict[str, str]) -> None:
    output = _run(
        "scan.py",
        ["--sizes", "200", "--naive-sample", "50", "--publish-sample", "200"],
        bench_env,
    )

    # The table's row: N, scan s, subs/s, peak MB, then 200 payments, 200 jobs, 200 published.
    assert re.search(r"^\s*200\s+[\d.]+\s+\d+\s+[\d.-]+\s+200\s+200\s+200\s", output, re.M), output
    assert re.search(r"^publishing 200 messages: publish_jobs \d+/s", output, re.M), output


def test_the_settlement_benchmark_runs(bench_env: dict[str, str]) -> None:
    args = [
        "--chains", "instant",
        "--paths", "per-job,batch",
        "--per-job-payments", "10",
        "--batch-payments", "400",
        "--batch-size", "100",
        "--relayers", "2",
        "--unfunded-relayers", "1",
        "--timeout", "60",
    ]  # fmt: skip
    output = _run("settle.py", args, bench_env)

    for path, count in (("per-job", 10), ("batch", 400)):
        pattern = rf"^instant {path}: {count}/{count} in [\d.]+s, [\d.]+/s, audit ok \({count} "
        assert re.search(pattern, output, re.M), output
    assert re.search(r"^instant: batch path [\d.]+x the per-job path", output, re.M), output
    # One relayer of two without ETH: no lost republish, no lease taken back, nobody dunned.
    rows = re.findall(
        r"^\s+instant\s+(per-job|batch)\s.*\s(\d+)\s+(\d+)\s+(\d+)\s+ok", output, re.M
    )
    assert sorted(rows) == [("batch", "0", "0", "0"), ("per-job", "0", "0", "0")], output
