"""Job tracking: the durable truth about every payment job (Celery carries only the id)."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class Job(models.Model):
    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting"
        ACTIVE = "active", "Active"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        DELAYED = "delayed", "Delayed"

    class Source(models.TextChoices):
        SCHEDULER = "scheduler", "Scheduler"
        MANUAL = "manual", "Manual trigger"
        DUNNING = "dunning", "Dunning retry"
        RETRY = "retry", "Operator retry"
        REORG = "reorg", "Settled again after a reorg"

    OPEN_STATUSES = (Status.WAITING, Status.ACTIVE, Status.DELAYED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by job_sub_idx (subscription, -created_at).
    subscription = models.ForeignKey(
        "subscriptions.Subscription", on_delete=models.PROTECT, related_name="jobs", db_index=False
    )
    payment = models.ForeignKey(
        "subscriptions.Payment", on_delete=models.PROTECT, related_name="jobs"
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.SCHEDULER)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.WAITING)
    progress = models.PositiveSmallIntegerField(default=0)
    attempts_made = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    # Snapshot of the job's input in the baseline's shape (subscriptionId, userAddress, ...).
    data = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error = models.TextField(blank=True, default="")
    # Claim and lease: only the worker holding an unexpired lease may act on an active job.
    lease_owner = models.CharField(max_length=128, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    recoveries = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # The transactional outbox: a waiting/delayed job is queued once its row is committed;
    # enqueued_at is when its message was last published to the broker (empty: not yet, the
    # dispatcher publishes it when it is due), next_attempt_at when it is due (empty: now).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            # At most one job in flight per payment: a second trigger, scan or retry is refused.
            models.UniqueConstraint(
                fields=["payment"],
                condition=Q(status__in=["waiting", "active", "delayed"]),
                name="job_one_open_per_payment",
            ),
            models.CheckConstraint(condition=Q(progress__lte=100), name="job_progress_max_100"),
        ]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="job_status_idx"),
            models.Index(fields=["subscription", "-created_at"], name="job_sub_idx"),
            models.Index(
                fields=["lease_expires_at"],
                name="job_lease_idx",
                condition=Q(status="active"),
            ),
            models.Index(
                fields=["enqueued_at"],
                name="job_waiting_idx",
                condition=Q(status__in=["waiting", "delayed"]),
            ),
            # The dispatcher's outbox: open jobs whose message is not on the broker, by due
            # time. Only unpublished rows are in it (small, whatever the backlog).
            models.Index(
                fields=["next_attempt_at"],
                name="job_unpublished_idx",
                condition=Q(status__in=["waiting", "delayed"], enqueued_at__isnull=True),
            ),
            # Partial: a job enters them only when it finishes, so the scan's inserts of
            # waiting jobs do not pay for them.
            models.Index(
                fields=["finished_at"],
                name="job_finished_idx",
                condition=Q(status__in=["completed", "failed"]),
            ),
            models.Index(
                fields=["error_code"],
                name="job_error_code_idx",
                condition=Q(status="failed"),
            ),
        ]

    def __str__(self) -> str:
        return f"Job {self.pk} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in self.OPEN_STATUSES


class JobAttempt(models.Model):
    """One attempt of a job: appended when a worker claims the job and closed once, when the
    attempt ends (never changed after that, never deleted but with its job). The job's
    timeline for operators (admin) and integrators (API)."""

    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        RETRY = "retry", "Transient error, retry scheduled"
        FAILED = "failed", "Failed"
        SETTLEMENT_PENDING = "settlement_pending", "Broadcast, waiting for the chain"
        CONFIGURATION_WAIT = "configuration_wait", "Waiting for the operator's configuration"
        WAITING = "waiting", "Waiting out an infrastructure fault (attempt not counted)"
        LEASE_LOST = "lease_lost", "Lease lost (another worker took the job)"
        WORKER_LOST = "worker_lost", "Worker lost (killed or timed out; taken back)"
        INTERRUPTED = "interrupted", "Interrupted (database unavailable)"
        REORGED = "reorged", "Transaction left the canonical chain"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="attempts", db_index=False)
    # The job's attempt count when this attempt started (a lost attempt is given back, so the
    # attempt after a crash carries the same number).
    number = models.PositiveSmallIntegerField()
    worker = models.CharField(max_length=128, blank=True, default="")
    outcome = models.CharField(max_length=32, choices=Outcome.choices, default=Outcome.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    # Every settlement transaction this attempt signed (a fee bump adds one), oldest first.
    transaction_hashes = models.JSONField(default=list, blank=True)
    # Gas of the transaction that landed, and what the relayer paid for it (wei).
    gas_used = models.BigIntegerField(null=True, blank=True)
    fee_wei = models.DecimalField(max_digits=78, decimal_places=0, null=True, blank=True)

    class Meta:
        ordering = ("started_at", "id")
        indexes = [models.Index(fields=["job", "started_at"], name="job_attempt_job_idx")]

    def __str__(self) -> str:
        return f"Attempt {self.number} of job {self.job_id} ({self.outcome})"

    @property
    def duration_ms(self) -> int | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds() * 1000)
