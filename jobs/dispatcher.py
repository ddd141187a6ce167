"""The outbox dispatcher: a long-running loop that makes the job rows, not the broker, the
queue.

A job is queued when its row commits with a due time. Publishing its message right after the
commit is only the fast path; this loop repeats it for every job that is due and has no
message on the broker (a retry whose backoff ended, a job whose publish failed while Redis was
down, a job taken back from a dead worker), and every few seconds it takes back expired leases
and republishes lost messages (``jobs_recover``).

Where it runs: a daemon thread in every Celery worker's main process (started when the worker
is ready, AUTOPAY_WORKER_DISPATCHER), so that whatever processes jobs also dispatches them, with
no extra process to deploy; or on its own with ``manage.py autopay_dispatch``. Any number may
run side by side: rows are picked with SKIP LOCKED.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import worker_ready, worker_shutting_down
from django.conf import settings
from django.db import close_old_connections, connection

from jobs.services import jobs_dispatch, jobs_recover

logger = logging.getLogger(__name__)

# How often the loop takes back expired leases and looks for lost messages (seconds).
RECOVERY_EVERY_SECONDS = 2.0
# While the database or the broker is down, one warning per this many seconds.
OUTAGE_LOG_EVERY_SECONDS = 30.0


class Dispatcher:
    """The loop. ``run`` blocks until ``stop``; ``step`` is one pass (for tests and tools)."""

    def __init__(self, *, interval: float | None = None) -> None:
        self.interval = (
            interval if interval is not None else settings.AUTOPAY_DISPATCH_INTERVAL_SECONDS
        )
        self._stop = threading.Event()
        self._next_recovery = 0.0
        self._last_outage_log = 0.0
        self.published = 0
        self.recovered = 0

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> int:
        """Publish due jobs (and, every few seconds, recover leases and lost messages)."""
        close_old_connections()
        now = time.monotonic()
        if now >= self._next_recovery:
            self._next_recovery = now + RECOVERY_EVERY_SECONDS
            summary = jobs_recover()
            self.recovered += summary.leases_recovered
            self.published += summary.published
            return summary.published
        published = jobs_dispatch()
        self.published += published
        return published

    def run(self) -> None:
        logger.info("job dispatcher running (every %.1fs)", self.interval)
        try:
            while not self._stop.is_set():
                try:
                    published = self.step()
                except Exception as exc:
                    self._log_outage(exc)
                    published = 0
                # A full batch means more are due: go on at once.
                if published < 1000:
                    self._stop.wait(self.interval)
        finally:
            connection.close()

    def _log_outage(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_outage_log >= OUTAGE_LOG_EVERY_SECONDS:
            self._last_outage_log = now
            logger.warning(
                "job dispatcher: %s: %s (retrying every %.1fs)",
                type(exc).__name__,
                str(exc)[:200],
                self.interval,
            )


_thread: threading.Thread | None = None
_dispatcher: Dispatcher | None = None


def dispatcher_start_thread() -> Dispatcher:
    """Start the dispatcher in a daemon thread of this process (once)."""
    global _thread, _dispatcher
    if _thread is not None and _thread.is_alive() and _dispatcher is not None:
        return _dispatcher
    _dispatcher = Dispatcher()
    _thread = threading.Thread(target=_dispatcher.run, name="job-dispatcher", daemon=True)
    _thread.start()
    return _dispatcher


def dispatcher_stop_thread(timeout: float = 5.0) -> None:
    if _dispatcher is not None:
        _dispatcher.stop()
    if _thread is not None:
        _thread.join(timeout)


@worker_ready.connect
def _start_in_worker(**kwargs: Any) -> None:
    if settings.AUTOPAY_WORKER_DISPATCHER:
        dispatcher_start_thread()


@worker_shutting_down.connect
def _stop_in_worker(**kwargs: Any) -> None:
    dispatcher_stop_thread()
