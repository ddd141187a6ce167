"""The attempts ledger of jobs settled in a batch, against real PostgreSQL, Redis and anvil:
each claim opens an attempt, the confirmation closes it with the batch's transaction and the
job's share of its gas and fee, and the jobs API shows it, as for a job paid alone."""

from __future__ import annotations

from typing import Any

import pytest
from web3 import Web3

from jobs.models import JobAttempt
from tests.batching import confirm, scheduled_jobs, settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chain]


def test_a_batch_settled_job_has_its_attempt_with_the_transaction_and_its_share_of_the_cost(
    engine_settings: Any, user: Any, api: Any, w3: Web3, token_address: str, deployer: Any
) -> None:
    _, job_ids = scheduled_jobs(user, w3, token_address, deployer, count=5, wallets=1)

    (sent,) = settle(job_ids, worker_id="batch-ledger")
    # Claimed: each job's attempt is open, under the batch's worker.
    open_attempts = JobAttempt.objects.filter(job_id__in=job_ids, finished_at__isnull=True)
    assert sorted(open_attempts.values_list("worker", "number")) == [("batch-ledger", 1)] * 5

    assert confirm(sent).completed == 5

    receipt = w3.eth.get_transaction_receipt(sent.transaction_hash)  # type: ignore[arg-type]
    share = receipt["gasUsed"] // 5
    price = receipt["effectiveGasPrice"]
    attempts = list(JobAttempt.objects.filter(job_id__in=job_ids))
    assert len(attempts) == 5, "one attempt per job"
    for attempt in attempts:
        assert attempt.outcome == JobAttempt.Outcome.COMPLETED
        assert attempt.finished_at is not None
        assert attempt.transaction_hashes == [sent.transaction_hash]
        assert attempt.gas_used == share
        assert attempt.fee_wei == share * price
    # The shares add up to (at most a rounding below) what the relayer paid.
    assert 0 <= receipt["gasUsed"] - sum(a.gas_used or 0 for a in attempts) < 5

    body = api.get(f"/api/jobs/{job_ids[0]}").json()["data"]
    (shown,) = body["attempts"]
    assert shown["outcome"] == "completed"
    assert shown["transactionHashes"] == [sent.transaction_hash]
    assert int(shown["gasUsed"]) == share
