"""Lease heartbeat: a live worker keeps renewing the leases of the jobs it is working on, so the
lease can be short (a dead worker's job comes back within one lease) however long the chain
takes to confirm.

One daemon thread per process renews every held lease every AUTOPAY_JOB_HEARTBEAT_SECONDS; it
exits (closing its database connection) when nothing is held. It only ever extends a lease the
job's row says this worker holds; it never decides that a lease was lost (the worker's own
conditional writes do). It stops renewing a job held longer than the task's hard time limit,
so a stuck worker cannot keep a job forever.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from uuid import UUID

from django.conf import settings
from django.db import close_old_connections, connection

from jobs.services import job_lease_renew

logger = logging.getLogger(__name__)


class LeaseHeartbeat:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # job id -> (worker id, monotonic time the hold began)
        self._held: dict[str, tuple[str, float]] = {}
        self._thread: threading.Thread | None = None
        # Set when the last hold ends: the thread exits (and closes its connection) at once.
        self._idle = threading.Event()

    @contextlib.contextmanager
    def holding(self, *, job_id: UUID | str, worker_id: str) -> Iterator[None]:
        """Renew the job's lease in the background while the block runs."""
        key = str(job_id)
        with self._lock:
            self._held[key] = (worker_id, time.monotonic())
            self._idle.clear()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="lease-heartbeat", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)
                if not self._held:
                    self._idle.set()

    def _run(self) -> None:
        try:
            while True:
                self._idle.wait(settings.AUTOPAY_JOB_HEARTBEAT_SECONDS)
                with self._lock:
                    if not self._held:
                        self._thread = None
                        return
                    held = dict(self._held)
                self._renew(held)
        finally:
            connection.close()

    def _renew(self, held: dict[str, tuple[str, float]]) -> None:
        close_old_connections()
        longest = float(settings.CELERY_TASK_TIME_LIMIT)
        now = time.monotonic()
        for job_id, (worker_id, since) in held.items():
            if now - since > longest:
                continue
            try:
                job_lease_renew(job_id=job_id, worker_id=worker_id)
            except Exception as exc:
                # The database is away: the lease runs out unless it comes back in time.
                logger.warning("lease heartbeat for job %s failed: %s", job_id, type(exc).__name__)


lease_heartbeat = LeaseHeartbeat()
