"""End-to-end settlement benchmark: the per-job path and the batch path in the same run, on a
private anvil with instant mining and with 1-second blocks.

    .venv/bin/python bench/settle.py [--batch-payments 20000] [--per-job-payments 400]
                                     [--chains instant,1s] [--concurrency 2] [--relayers 4]
                                     [--unfunded-relayers 1] [--beat]

For each chain (an anvil it starts itself, with the token and the aggregate3 contract deployed)
and each path (AUTOPAY_SETTLEMENT_BATCH_SIZE=1, then the batch size, default 200):

1. loads N due subscriptions paid from 20 server-held wallets (funded on the chain) to a few
   dozen recipients, into the database ``autopay_bench`` (created and migrated if missing);
2. starts real workers (``celery worker -c 2``, prefork, as production runs them) and, once
   they are ready, sends one ``autopay.scan_due_subscriptions`` task, as beat does: the scan
   creates payments and jobs and publishes them, the workers settle them;
3. waits until every payment is completed or failed, and measures payments per second (scan
   message to the last recorded payment), gas per payment (every relayer transaction of the
   run), CPU seconds per payment (the worker processes; and the whole machine: workers, anvil,
   PostgreSQL, Redis);
4. audits the chain: one AuthorizationUsed (one transfer) per completed payment, with the
   transaction the payment records, none for any other, and the recipients' balances equal to
   the amounts completed;
5. reports what a billing day must keep at zero: lost-message republishes, lease recoveries and
   subscriptions moved to dunning (with ``--unfunded-relayers N`` the first N relayers of the
   pool hold no ETH), and the JSON-RPC requests per payment (all workers, counted in Redis).
   With ``--beat`` beat runs inside the worker, so the recovery and finality sweeps (every
   10 s) compete with the payments as on a billing day.

Environment defaults (an existing variable wins): DATABASE_URL (autopay_bench), REDIS_URL
(db 14, flushed before each measurement: give it a Redis database of its own),
CELERY_QUEUE=autopay-bench, DJANGO_SECRET_KEY. It exits with 1 when a chain audit fails or a
run times out.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DEFAULT_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/autopay_bench",
    "REDIS_URL": "redis://127.0.0.1:6379/14",
    "DJANGO_SECRET_KEY": "bench",
    "CELERY_QUEUE": "autopay-bench",
    "LOG_LEVEL": "WARNING",
    "AUTOPAY_KEY_ENCRYPTION_KEY": "YmVuY2gtb25seS1mZXJuZXQta2V5LTMyLWJ5dGVzISE=",
}
for _name, _value in DEFAULT_ENV.items():
    os.environ.setdefault(_name, _value)

WALLETS = 20
RECIPIENTS = 40
AMOUNT = Decimal("1.25")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    chain: str
    path: str
    payments: int
    completed: int
    failed: int
    seconds: float
    gas_per_payment: float
    transactions: int
    worker_cpu: float
    anvil_cpu: float
    database_cpu: float
    machine_cpu: float
    load: tuple[float, float]
    audit: str
    steps: dict[str, float]
    # What a billing day must keep at zero, and what a rate-limited provider bills.
    rpc_per_payment: float = 0.0
    lost_republished: int = 0
    lease_recoveries: int = 0
    subscriptions_dunned: int = 0

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


# --- set-up -----------------------------------------------------------------------------------


def ensure_database() -> None:
    import environ
    import psycopg

    config = environ.Env.db_url_config(os.environ["DATABASE_URL"])
    admin = psycopg.connect(
        host=config.get("HOST") or "127.0.0.1",
        port=int(config.get("PORT") or 5432),
        user=config.get("USER") or "postgres",
        password=config.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    )
    with admin:
        name = config["NAME"]
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')


def setup_django() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def start_chain(block_time: float | None) -> tuple[Any, dict[str, str]]:
    """A private anvil with the token and the aggregate3 contract; the engine's chain env."""
    from web3 import Web3

    from autopay.devtools.anvil import ANVIL_DEV_KEYS, AnvilProcess
    from autopay.devtools.contracts import deploy_multicall, deploy_token

    node = AnvilProcess(block_time=block_time, accounts=10).start()
    w3 = Web3(Web3.HTTPProvider(node.rpc_url, request_kwargs={"timeout": 60}))
    token = deploy_token(w3, ANVIL_DEV_KEYS[0])
    multicall = deploy_multicall(w3, ANVIL_DEV_KEYS[0])
    env = {
        "CHAIN_RPC_URL": node.rpc_url,
        "CHAIN_ID": "31337",
        "CHAIN_NETWORK": "eip155:31337",
        "TOKEN_ADDRESS": token,
        "CHAIN_MULTICALL_ADDRESS": multicall,
        "AUTOPAY_PAYMENT_RAIL": "x402",
    }
    return node, env


def load(count: int, *, w3: Any, chain_env: dict[str, str]) -> tuple[list[str], list[Any]]:
    """``count`` due monthly subscriptions paid from WALLETS funded wallets to RECIPIENTS new
    recipients; returns the recipients and the wallets."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone
    from eth_account import Account

    from autopay.devtools.anvil import ANVIL_DEV_KEYS
    from autopay.devtools.contracts import mint
    from jobs.models import Job
    from subscriptions.models import PayerWallet, Payment, Subscription
    from subscriptions.services import wallet_create

    with connection.cursor() as cursor:
        cursor.execute(
            f"TRUNCATE {Job._meta.db_table}, {Payment._meta.db_table}, "
            f"{Subscription._meta.db_table}, {PayerWallet._meta.db_table} RESTART IDENTITY CASCADE"
        )
    owner, _ = get_user_model().objects.get_or_create(username="bench")
    wallets = [wallet_create(owner=owner, label=f"bench {index}") for index in range(WALLETS)]
    per_wallet = int(AMOUNT.scaleb(6)) * (count // WALLETS + 2)
    for wallet in wallets:
        mint(w3, chain_env["TOKEN_ADDRESS"], ANVIL_DEV_KEYS[0], wallet.address, per_wallet)
    recipients = [str(Account.create().address) for _ in range(RECIPIENTS)]
    # Recipients are merchants that have been paid before (as in production): the first
    # payment to an empty balance costs 17k more gas, on either path.
    for recipient in recipients:
        mint(w3, chain_env["TOKEN_ADDRESS"], ANVIL_DEV_KEYS[0], recipient, 1)
    now = timezone.now()
    rows = []
    for number in range(count):
        wallet = wallets[number % WALLETS]
        anchor = now - timedelta(seconds=60 + number % 3600)
        rows.append(
            Subscription(
                owner=owner,
                service_name=f"Service {number % RECIPIENTS}",
                payer_address=wallet.address,
                wallet=wallet,
                recipient_address=recipients[number % RECIPIENTS],
                amount=AMOUNT,
                token_address=chain_env["TOKEN_ADDRESS"],
                token_decimals=settings.TOKEN_DECIMALS,
                network="eip155:31337",
                billing_anchor=anchor,
                next_payment_due_at=anchor,
                next_period_index=0,
                next_period_due_at=anchor,
            )
        )
    Subscription.objects.bulk_create(rows, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Subscription._meta.db_table}")
    return recipients, wallets


# --- workers and CPU --------------------------------------------------------------------------


class Workers:
    """``celery worker -c N`` processes, as production runs them."""

    def __init__(
        self, env: dict[str, str], concurrency: int, log: Path, *, beat: bool = False
    ) -> None:
        self.env, self.concurrency, self.log, self.beat = env, concurrency, log, beat
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Workers:
        from django.conf import settings

        command = [
            sys.executable, "-m", "celery", "-A", "config", "worker",
            "-Q", settings.CELERY_TASK_DEFAULT_QUEUE, "-c", str(self.concurrency),
            "--pool", "prefork", "--prefetch-multiplier", "1",
            "-n", f"bench-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
        ]  # fmt: skip
        if self.beat:
            # Beat inside the worker, from the database's schedule: maintenance (recovery and
            # finality sweeps every 10 s, the webhook dispatcher) runs beside the payments, as
            # on a billing day in production.
            command += ["-B", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]
        self.log.write_text("")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while len(self.children()) < self.concurrency:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        time.sleep(1.0)  # the pool processes finish importing
        return self

    def children(self) -> list[int]:
        assert self.process is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.process.pid:
                    pids.append(int(entry.name))
        return pids

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return sum(process_cpu(pid) for pid in [self.process.pid, *self.children()])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def database_cpu() -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving the benchmark's database."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return {pid: process_cpu(pid) for (pid,) in cursor.fetchall()}


def batch_steps(log: str) -> dict[str, float]:
    """Seconds per step summed over the run's batches, from the workers' batch reports."""
    import ast
    import re

    steps: dict[str, float] = {}
    for match in re.finditer(r"batch(?: 0x[0-9a-f]+ confirmed)?: (\{.*\})$", log, re.M):
        report = ast.literal_eval(match.group(1))
        for step, seconds in report.get("seconds", {}).items():
            steps[step] = steps.get(step, 0.0) + seconds
    return steps


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICKS


# --- one measurement --------------------------------------------------------------------------


def measure(
    *,
    anvil_pid: int,
    chain: str,
    path: str,
    count: int,
    batch_size: int,
    w3: Any,
    chain_env: dict[str, str],
    relayer_keys: list[str],
    concurrency: int,
    timeout: float,
    unfunded: int = 0,
    beat: bool = False,
) -> Result:
    from django.conf import settings
    from eth_account import Account
    from web3.types import RPCEndpoint

    from autopay.chain.client import rpc_calls_key
    from config.celery import app
    from core.redis import get_redis
    from subscriptions.models import Payment, Subscription

    recipients, _wallets = load(count, w3=w3, chain_env=chain_env)
    client = get_redis()
    client.flushdb()
    # A relayer of the pool without ETH: its work must go to the others, no customer failing.
    dry = [Account.from_key(key).address for key in relayer_keys[:unfunded]]
    for address in dry:
        w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [address, "0x0"])
    env = {
        **os.environ,
        **chain_env,
        "AUTOPAY_SETTLEMENT_BATCH_SIZE": str(batch_size),
        "RELAYER_PRIVATE_KEYS": ",".join(relayer_keys),
        "RELAYER_PRIVATE_KEY": relayer_keys[0],
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        # Each worker process keeps its database connection (on both paths), so that the
        # PostgreSQL backends' CPU can be read at the end of the run.
        "CELERY_DB_REUSE_MAX": "100000",
    }
    log = REPO_ROOT / "var" / f"bench-settle-{chain}-{path}.log"
    log.parent.mkdir(exist_ok=True)
    workers = Workers(env, concurrency, log, beat=beat).start()
    start_block = w3.eth.block_number
    try:
        worker_cpu_0, machine_cpu_0 = workers.cpu_seconds(), machine_cpu()
        anvil_cpu_0, database_0 = process_cpu(anvil_pid), database_cpu()
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        app.send_task("autopay.scan_due_subscriptions", queue=settings.CELERY_TASK_DEFAULT_QUEUE)
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            done = Payment.objects.filter(
                status__in=[Payment.Status.COMPLETED, Payment.Status.FAILED]
            ).count()
            if done >= count:
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        worker_cpu = workers.cpu_seconds() - worker_cpu_0
        machine = machine_cpu() - machine_cpu_0
        anvil_cpu = process_cpu(anvil_pid) - anvil_cpu_0
        database = sum(
            seconds - database_0.get(pid, 0.0) for pid, seconds in database_cpu().items()
        )
    finally:
        workers.stop()
        for address in dry:
            w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [address, hex(10**22)])
    end_block = w3.eth.block_number
    calls = client.hgetall(rpc_calls_key(chain_env["CHAIN_NETWORK"]))
    rpc_calls = sum(int(count) for count in calls.values())
    worker_log = log.read_text(errors="replace")
    completed = Payment.objects.filter(status=Payment.Status.COMPLETED).count()
    failed = Payment.objects.filter(status=Payment.Status.FAILED).count()
    gas, transactions = relayer_gas(w3, relayer_keys, start_block, end_block)
    if batch_size > 1:
        per_block = batches_per_block(w3, relayer_keys, start_block, end_block)
        print(f"{chain} {path}: relayer transactions per block {per_block}", flush=True)
    audit = audit_chain(w3, chain_env["TOKEN_ADDRESS"], recipients, start_block, end_block)
    if done < count:
        audit += f"; TIMEOUT: {done}/{count} recorded"
    return Result(
        chain=chain,
        path=path,
        payments=count,
        completed=completed,
        failed=failed,
        seconds=seconds,
        gas_per_payment=gas / completed if completed else 0.0,
        transactions=transactions,
        worker_cpu=worker_cpu / max(completed, 1),
        anvil_cpu=anvil_cpu / max(completed, 1),
        database_cpu=database / max(completed, 1),
        load=(load_before, os.getloadavg()[0]),
        machine_cpu=machine / max(completed, 1),
        audit=audit,
        steps=batch_steps(worker_log),
        rpc_per_payment=rpc_calls / max(completed, 1),
        lost_republished=sum(
            int(line.split(" job message(s) lost")[0].rsplit(" ", 1)[-1])
            for line in worker_log.splitlines()
            if " job message(s) lost" in line
        ),
        lease_recoveries=worker_log.count("from an expired lease"),
        subscriptions_dunned=Subscription.objects.exclude(
            status=Subscription.Status.ACTIVE
        ).count(),
    )


def relayer_gas(w3: Any, keys: list[str], start: int, end: int) -> tuple[int, int]:
    """Gas used by every relayer transaction mined in blocks (start, end]."""
    from eth_account import Account
    from web3.types import RPCEndpoint

    relayers = {Account.from_key(key).address.lower() for key in keys}
    gas = transactions = 0
    for number in range(start + 1, end + 1):
        receipts = w3.provider.make_request(RPCEndpoint("eth_getBlockReceipts"), [hex(number)])
        for receipt in receipts.get("result") or []:
            if str(receipt["from"]).lower() in relayers:
                gas += int(receipt["gasUsed"], 16)
                transactions += 1
    return gas, transactions


def batches_per_block(w3: Any, keys: list[str], start: int, end: int) -> dict[int, int]:
    """How many blocks carried 1, 2, 3... relayer transactions."""
    from eth_account import Account

    relayers = {Account.from_key(key).address.lower() for key in keys}
    histogram: dict[int, int] = {}
    for number in range(start + 1, end + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        count = sum(1 for tx in block["transactions"] if str(tx["from"]).lower() in relayers)
        if count:
            histogram[count] = histogram.get(count, 0) + 1
    return dict(sorted(histogram.items()))


def audit_chain(w3: Any, token: str, recipients: list[str], start: int, end: int) -> str:
    """One AuthorizationUsed per completed payment (in the transaction it records), none for
    anything else, and the recipients hold exactly what was completed."""
    from web3 import Web3

    from autopay.chain.abi import AUTHORIZATION_USED_TOPIC
    from autopay.chain.client import token_balance
    from subscriptions.models import Payment

    logs = w3.eth.get_logs(
        {
            "address": Web3.to_checksum_address(token),
            "fromBlock": start + 1,
            "toBlock": end,
            "topics": [AUTHORIZATION_USED_TOPIC],
        }
    )
    on_chain: dict[tuple[str, str], list[str]] = {}
    for log in logs:
        key = ("0x" + log["topics"][1].hex()[-40:], "0x" + log["topics"][2].hex()[-64:])
        on_chain.setdefault(key, []).append("0x" + log["transactionHash"].hex().removeprefix("0x"))
    problems = []
    twice = sum(1 for hashes in on_chain.values() if len(hashes) > 1)
    if twice:
        problems.append(f"{twice} authorization(s) used twice")
    completed = Payment.objects.filter(status=Payment.Status.COMPLETED).values_list(
        "payer_address", "authorization_nonce", "transaction_hash", "amount"
    )
    expected_total = Decimal(0)
    missing = wrong_hash = 0
    seen = set()
    for payer, nonce, tx_hash, amount in completed:
        key = (payer.lower(), nonce.lower())
        seen.add(key)
        expected_total += amount
        if key not in on_chain:
            missing += 1
        elif tx_hash.lower() not in on_chain[key]:
            wrong_hash += 1
    if missing:
        problems.append(f"{missing} completed payment(s) without a transfer")
    if wrong_hash:
        problems.append(f"{wrong_hash} payment(s) recording another transaction")
    extra = len(set(on_chain) - seen)
    if extra:
        problems.append(f"{extra} transfer(s) of no completed payment")
    # Each recipient started with one atomic unit (see load()).
    received = sum(token_balance(token, recipient, w3=w3) - 1 for recipient in recipients)
    if Decimal(received).scaleb(-6) != expected_total:
        problems.append(f"recipients hold {received}, payments say {expected_total}")
    return "; ".join(problems) or f"ok ({len(logs)} transfers)"


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-payments", type=int, default=20000)
    parser.add_argument("--per-job-payments", type=int, default=400)
    parser.add_argument("--block-payments", type=int, default=10000, help="batch path, 1s blocks")
    parser.add_argument("--per-job-block-payments", type=int, default=100)
    parser.add_argument("--chains", default="instant,1s")
    parser.add_argument("--paths", default="per-job,batch")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--relayers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument(
        "--unfunded-relayers", type=int, default=0, help="relayers of the pool left without ETH"
    )
    parser.add_argument(
        "--beat", action="store_true", help="run beat's maintenance beside the payments"
    )
    args = parser.parse_args()

    ensure_database()
    setup_django()
    from django.conf import settings
    from web3 import Web3

    from autopay.devtools.anvil import ANVIL_DEV_KEYS

    relayer_keys = ANVIL_DEV_KEYS[1 : 1 + args.relayers]
    print(
        f"database {settings.DATABASES['default']['NAME']}, queue "
        f"{settings.CELERY_TASK_DEFAULT_QUEUE} on {settings.REDIS_URL}, {os.cpu_count()} CPUs, "
        f"{args.concurrency} worker processes, {len(relayer_keys)} relayers",
        flush=True,
    )
    results: list[Result] = []
    for chain in args.chains.split(","):
        block_time = None if chain == "instant" else float(chain.removesuffix("s"))
        node, chain_env = start_chain(block_time)
        try:
            w3 = Web3(Web3.HTTPProvider(node.rpc_url, request_kwargs={"timeout": 60}))
            for path in args.paths.split(","):
                if path == "batch":
                    count = args.batch_payments if block_time is None else args.block_payments
                    size = args.batch_size
                else:
                    count = (
                        args.per_job_payments if block_time is None else args.per_job_block_payments
                    )
                    size = 1
                result = measure(
                    anvil_pid=node.pid,
                    chain=chain,
                    path=path,
                    count=count,
                    batch_size=size,
                    w3=w3,
                    chain_env=chain_env,
                    relayer_keys=relayer_keys,
                    concurrency=args.concurrency,
                    timeout=args.timeout,
                    unfunded=args.unfunded_relayers,
                    beat=args.beat,
                )
                results.append(result)
                print(
                    f"{chain} {path}: {result.completed}/{count} in {result.seconds:.1f}s, "
                    f"{result.rate:.1f}/s, audit {result.audit}",
                    flush=True,
                )
        finally:
            node.stop()
    print_table(results)
    # A run whose chain audit found a problem (or that timed out) is a failure, not a figure.
    if any(not result.audit.startswith("ok") for result in results):
        sys.exit(1)


def print_table(results: list[Result]) -> None:
    print()
    print(
        f"{'chain':>8} {'path':>8} {'payments':>8} {'failed':>6} {'seconds':>7} "
        f"{'pay/s':>7} {'gas/pay':>8} {'txs':>5} {'CPU ms/pay: workers':>19} "
        f"{'anvil':>6} {'db':>6} {'machine':>8} {'load':>9} {'rpc/pay':>7} {'lost':>4} "
        f"{'leases':>6} {'dunned':>6}  audit"
    )
    for r in results:
        print(
            f"{r.chain:>8} {r.path:>8} {r.completed:>8} {r.failed:>6} {r.seconds:>7.1f} "
            f"{r.rate:>7.1f} {r.gas_per_payment:>8.0f} {r.transactions:>5} "
            f"{r.worker_cpu * 1000:>19.2f} {r.anvil_cpu * 1000:>6.2f} "
            f"{r.database_cpu * 1000:>6.2f} {r.machine_cpu * 1000:>8.2f} "
            f"{r.load[0]:>4.1f}-{r.load[1]:<4.1f} {r.rpc_per_payment:>7.3f} "
            f"{r.lost_republished:>4} {r.lease_recoveries:>6} {r.subscriptions_dunned:>6}  "
            f"{r.audit}"
        )
    for r in results:
        if r.steps:
            total = sum(r.steps.values())
            shares = ", ".join(
                f"{step} {seconds / max(r.completed, 1) * 1000:.2f}"
                for step, seconds in sorted(r.steps.items(), key=lambda item: -item[1])
            )
            print(
                f"{r.chain} {r.path}: worker wall time per payment (ms) {shares} "
                f"(total {total / max(r.completed, 1) * 1000:.2f})"
            )
    by_chain: dict[str, dict[str, Result]] = {}
    for r in results:
        by_chain.setdefault(r.chain, {})[r.path] = r
    for chain, paths in by_chain.items():
        if "batch" in paths and "per-job" in paths and paths["per-job"].rate:
            batch, single = paths["batch"], paths["per-job"]
            print(
                f"{chain}: batch path {batch.rate / single.rate:.1f}x the per-job path, "
                f"{batch.gas_per_payment / single.gas_per_payment:.0%} of its gas per payment"
            )


if __name__ == "__main__":
    main()
