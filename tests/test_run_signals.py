"""`bin/run` started in the background (as a script does: SIGINT ignored at start) stops every
process it started on SIGINT, and on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from autopay.devtools.anvil import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

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


@pytest.mark.timeout(600)
def test_run_in_the_background_stops_everything_on_sigint_and_sigterm(tmp_path: Path) -> None:
    queue = f"autopay-run-test-{uuid.uuid4().hex[:8]}"
    anvil_port, web_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(
        {
            "AUTOPAY_VAR_DIR": str(tmp_path / "var"),
            "ANVIL_PORT": str(anvil_port),
            "PORT": str(web_port),
            "CELERY_QUEUE": queue,
            "REDIS_URL": settings.REDIS_URL,
            "WORKER_CONCURRENCY": "1",
        }
    )
    needles = (queue, str(tmp_path), f"127.0.0.1:{web_port}")
    for signum in (signal.SIGINT, signal.SIGTERM):
        log = tmp_path / f"run-{signum.name}.log"
        process = _start_in_background(env, log)
        try:
            _wait_running(process, log, queue)
            assert _processes_mentioning(*needles), "web, worker, beat and anvil are running"

            process.send_signal(signum)
            process.wait(timeout=60)

            deadline = time.monotonic() + 20
            while _processes_mentioning(*needles) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = _processes_mentioning(*needles)
            assert not left, f"after {signum.name}: {left}"
            assert "auto-pay stopped." in log.read_text(errors="replace")
        finally:
            if process.poll() is None:
                process.kill()
            for line in _processes_mentioning(*needles):
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
