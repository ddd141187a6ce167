"""Running the batch path in the test's own process: settle, then confirm once mined; and
the due jobs a batch test starts from."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from web3 import Web3

from autopay import batch
from autopay.devtools.contracts import mint
from autopay.scan import scan_due
from jobs.models import Job
from tests.factories import PayerWalletFactory, SubscriptionFactory, new_address


def scheduled_jobs(
    user: Any, w3: Web3, token: str, deployer: Any, *, count: int, wallets: int
) -> tuple[list[Any], list[str]]:
    """``count`` due subscriptions paid from ``wallets`` funded wallets, and their jobs made by
    the scan (marked published) but not sent: the wallets, and the job ids in order."""
    payers = [PayerWalletFactory.create(owner=user) for _ in range(wallets)]
    for wallet in payers:
        mint(w3, token, deployer.key, str(wallet.address), 100 * 10**6)
    for index in range(count):
        wallet = payers[index % wallets]
        SubscriptionFactory.create(
            owner=user,
            wallet=wallet,
            payer_address=wallet.address,
            recipient_address=new_address(),
            token_address=token,
            amount=Decimal("2"),
        )
    assert scan_due(publish=False).jobs_created == count
    job_ids = [str(pk) for pk in Job.objects.order_by("created_at").values_list("pk", flat=True)]
    return payers, job_ids


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
