"""Which jobs a worker may claim: the per-job claim (a process message) and the bulk claim (a
settle-batch message) must agree, job for job (and in the attempts ledger), since a job can
reach either way.

In this process against the real PostgreSQL: the rule lives in each claim's conditional
update. Two real workers racing for the same jobs are tested in autopay/test_batch_worker.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from jobs.bulk import jobs_claim
from jobs.models import Job
from jobs.services import job_claim, payment_trigger
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

WORKER = "claimer:1:task"
OTHER_WORKER = "holder:2:task"

Claim = Callable[[Sequence[str], str], set[str]]


def _claim_one_by_one(job_ids: Sequence[str], worker_id: str) -> set[str]:
    return {
        str(claimed.pk)
        for job_id in job_ids
        if (claimed := job_claim(job_id=job_id, worker_id=worker_id)) is not None
    }


def _claim_in_bulk(job_ids: Sequence[str], worker_id: str) -> set[str]:
    return {claimed.id for claimed in jobs_claim(job_ids=job_ids, worker_id=worker_id)}


# Every way a job is claimed; a single claim after a refactor is one entry.
CLAIMS: dict[str, Claim] = {"per-job": _claim_one_by_one, "bulk": _claim_in_bulk}


def _job(user: Any, **state: Any) -> Job:
    """A job of its own subscription and payment (one open job per payment), put in
    ``state`` straight in its row."""
    job = payment_trigger(subscription=SubscriptionFactory.create(owner=user))
    Job.objects.filter(pk=job.pk).update(**state)
    return Job.objects.get(pk=job.pk)


def _row(job: Job) -> tuple[Any, ...]:
    job.refresh_from_db()
    return (job.status, job.lease_owner, job.lease_expires_at, job.attempts_made, job.progress)


@pytest.mark.parametrize("claim", list(CLAIMS.values()), ids=list(CLAIMS))
def test_a_claim_takes_only_waiting_and_due_jobs_with_attempts_left(
    user: Any, claim: Claim
) -> None:
    now = timezone.now()
    later = now + timedelta(minutes=5)
    # Each job that must not be claimed has attempts left and no retry time pending unless
    # that is its point: only its status (or its lease, attempts or retry time) keeps it out.
    kept_out = {
        "completed": _job(user, status=Job.Status.COMPLETED, attempts_made=1, finished_at=now),
        "failed": _job(user, status=Job.Status.FAILED, attempts_made=1, finished_at=now),
        "held by another worker": _job(
            user,
            status=Job.Status.ACTIVE,
            lease_owner=OTHER_WORKER,
            lease_expires_at=later,
            attempts_made=1,
            progress=30,
        ),
        "out of attempts": _job(
            user,
            status=Job.Status.DELAYED,
            attempts_made=3,
            max_attempts=3,
            next_attempt_at=now - timedelta(seconds=5),
        ),
        "retry time not come": _job(
            user, status=Job.Status.DELAYED, attempts_made=1, next_attempt_at=later
        ),
    }
    claimable = {
        "waiting": _job(user, status=Job.Status.WAITING),
        "delayed and due": _job(
            user,
            status=Job.Status.DELAYED,
            attempts_made=1,
            next_attempt_at=now - timedelta(seconds=5),
        ),
    }
    before = {name: _row(job) for name, job in kept_out.items()}
    attempts_before = {name: job.attempts_made for name, job in claimable.items()}
    every_id = [str(job.pk) for job in (*kept_out.values(), *claimable.values())]

    claimed = claim(every_id, WORKER)

    names = {str(job.pk): name for name, job in (*kept_out.items(), *claimable.items())}
    assert sorted(names[job_id] for job_id in claimed) == sorted(claimable)
    for name, job in kept_out.items():
        assert _row(job) == before[name], f"the {name} job was touched"
    for name, job in claimable.items():
        job.refresh_from_db()
        assert job.status == Job.Status.ACTIVE, name
        assert job.lease_owner == WORKER, name
        assert job.lease_expires_at is not None and job.lease_expires_at > timezone.now(), name
        assert job.attempts_made == attempts_before[name] + 1, name
        assert job.next_attempt_at is None, name
        # Either claim opens the job's attempt in its ledger.
        (attempt,) = job.attempts.filter(finished_at__isnull=True)
        assert (attempt.worker, attempt.number) == (WORKER, job.attempts_made), name
    for name, job in kept_out.items():
        assert not job.attempts.filter(worker=WORKER).exists(), f"the {name} job got an attempt"
    # Claimed once: the same message again (a redelivery) takes nothing, nor does another
    # worker's.
    assert claim(every_id, WORKER) == set()
    assert claim(every_id, OTHER_WORKER) == set()
