"""`bin/run` started in the background (as a script does: SIGINT ignored at start) stops every
process it started on SIGINT, and on SIGTERM: once running, and at several points of its
set-up; a chain that dies during set-up stops the run instead of starting web and workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from autopay.devtools.anvil import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
# The test settings' database and (unreachable) chain are not bin/run's: it picks its own.
_NOT_INHERITED = {"DATABASE_URL", "CHAIN_RPC_URL"}

pytestmark = [pytest.mark.chain, pytest.mark.worker]


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(needle in command for needle in needles):
            found.append(f"{entry.name}: {command}")
    return found


def _start_in_background(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    def like_a_background_job() -> None:
        # What a non-interactive shell does to `./bin/run &`: SIGINT (and SIGQUIT) ignored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    return subprocess.Popen(
        ["bash", str(REPO_ROOT / "bin" / "run")],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=like_a_background_job,  # SIGINT ignored: the point of the test
    )


def _wait_running(process: subprocess.Popen[bytes], log: Path, queue: str) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        if " ready." in log.read_text(errors="replace") and _processes_mentioning(queue):
            return
        time.sleep(0.5)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def _run_env(tmp_path: Path, queue: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """bin/run's environment on ports of its own (never the defaults a developer's bin/run
    holds), and what names its processes in /proc."""
    ports = {name: free_port() for name in ("ANVIL_PORT", "ANVIL2_PORT", "PAID_SERVICE_PORT")}
    web_port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    env.update(
        {
            "AUTOPAY_VAR_DIR": str(tmp_path / "var"),
            **{name: str(port) for name, port in ports.items()},
            "PORT": str(web_port),
            "CELERY_QUEUE": queue,
            "REDIS_URL": settings.REDIS_URL,
            "WORKER_CONCURRENCY": "1",
        }
    )
    needles = (
        queue,
        str(tmp_path),
        f"127.0.0.1:{web_port}",
        *(f"--port {port}" for port in ports.values()),
    )
    return env, needles


def _assert_all_stopped(needles: tuple[str, ...], log: Path) -> None:
    deadline = time.monotonic() + 20
    while _processes_mentioning(*needles) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _processes_mentioning(*needles)
    assert not left, f"left running: {left}\n{log.read_text(errors='replace')[-2000:]}"


@contextlib.contextmanager
def _running_in_background(
    env: dict[str, str], log: Path, needles: tuple[str, ...]
) -> Iterator[subprocess.Popen[bytes]]:
    """bin/run in the background; whatever the test found, nothing of it is left running."""
    process = _start_in_background(env, log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        for line in _processes_mentioning(*needles):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


def _wait_for_line(process: subprocess.Popen[bytes], log: Path, marker: str) -> None:
    deadline = time.monotonic() + 240
    while marker not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.05)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("marker", "signum"),
    [
        ("starting the chain", signal.SIGINT),
        ("deploying on the local chains", signal.SIGTERM),
        ("migrating the database", signal.SIGINT),
        ("creating demo data", signal.SIGINT),
    ],
)
def test_a_signal_during_set_up_stops_everything_and_exits(
    tmp_path: Path, marker: str, signum: signal.Signals
) -> None:
    """The signal arrives while a set-up step runs (bash used to hold it until the step ended,
    and forgot a SIGINT whose step exited normally: the system came up anyway)."""
    env, needles = _run_env(tmp_path, f"autopay-run-test-{uuid.uuid4().hex[:8]}")
    log = tmp_path / "run.log"
    with _running_in_background(env, log, needles) as process:
        _wait_for_line(process, log, marker)
        process.send_signal(signum)
        started = time.monotonic()
        returncode = process.wait(timeout=30)
        # At once: not after the step (migrating, deploying, the demo data take 5-15 s here).
        took = time.monotonic() - started
        assert took < 4, f"stopped after {took:.1f} s"
        assert returncode == 128 + signum, log.read_text(errors="replace")[-2000:]
        text = log.read_text(errors="replace")
        assert "auto-pay stopped." in text
        assert "auto-pay is starting" not in text, "nothing started after the signal"
        _assert_all_stopped(needles, log)


@pytest.mark.timeout(600)
def test_a_chain_that_dies_during_set_up_stops_the_run(tmp_path: Path) -> None:
    env, needles = _run_env(tmp_path, f"autopay-run-test-{uuid.uuid4().hex[:8]}")
    log = tmp_path / "run.log"
    with _running_in_background(env, log, needles) as process:
        _wait_for_line(process, log, "migrating the database")
        chains = _processes_mentioning(f"--port {env['ANVIL_PORT']}")
        assert chains, "the first chain runs"
        for line in chains:
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)

        returncode = process.wait(timeout=120)

        text = log.read_text(errors="replace")
        assert returncode != 0, text[-2000:]
        assert "auto-pay is starting" not in text, "no web or worker without a chain"
        assert "auto-pay stopped." in text
        _assert_all_stopped(needles, log)


@pytest.mark.timeout(600)
def test_run_in_the_background_stops_everything_on_sigint_and_sigterm(tmp_path: Path) -> None:
    queue = f"autopay-run-test-{uuid.uuid4().hex[:8]}"
    env, needles = _run_env(tmp_path, queue)
    for signum in (signal.SIGINT, signal.SIGTERM):
        log = tmp_path / f"run-{signum.name}.log"
        with _running_in_background(env, log, needles) as process:
            _wait_running(process, log, queue)
            assert _processes_mentioning(*needles), "web, worker, beat and anvil are running"

            process.send_signal(signum)
            assert process.wait(timeout=60) == 128 + signum, "the cleanup trap exits"

            _assert_all_stopped(needles, log)
            text = log.read_text(errors="replace")
            assert "auto-pay stopped." in text
            assert "AXES: BEGIN" not in text, "no noise lines"
