"""Running the batch path in the test's own process: settle, then confirm once mined."""

from __future__ import annotations

import time

from autopay import batch


def settle(job_ids: list[str], worker_id: str = "batch-test") -> list[batch.SentBatch]:
    """Settle a batch up to its broadcast; the transactions sent."""
    sent: list[batch.SentBatch] = []
    batch.settle_jobs(job_ids=job_ids, worker_id=worker_id, on_sent=sent.append)
    return sent


def confirm(sent: batch.SentBatch, timeout: float = 30.0) -> batch.BatchReport:
    """Confirm a batch transaction as the confirm task does, looking again (as the task would
    after AUTOPAY_BATCH_CONFIRM_POLL_SECONDS) until it is mined: instant mining is quick, not
    synchronous."""
    deadline = time.monotonic() + timeout
    while True:
        report = batch.confirm_jobs(
            transaction_hash=sent.transaction_hash,
            job_ids=sent.job_ids,
            lease_owner=sent.lease_owner,
            deadline=sent.deadline,
        )
        if report.retry_in is None or time.monotonic() > deadline:
            return report
        time.sleep(0.02)


def settle_as_one_batch(job_ids: list[str], worker_id: str = "batch-test") -> batch.BatchReport:
    """Every job through the batch path, as one settle-batch message, each transaction sent
    confirmed. Every job must be taken by the batch itself: a job handed to the single path
    instead would leave a caller that means to test the batch path testing the other one."""
    sent: list[batch.SentBatch] = []
    report = batch.settle_jobs(job_ids=job_ids, worker_id=worker_id, on_sent=sent.append)
    assert report.claimed == len(set(job_ids)), "a job left the batch path"
    for transaction in sent:
        confirm(transaction)
    return report
