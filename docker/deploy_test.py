#!/usr/bin/env python3
"""The compose stack, end to end: bin/test-deploy runs this once the images exist.

compose.yaml (plus docker/compose.deploy-test.yaml: an anvil chain on the compose network) is
started as a user would start it, with throwaway secrets in var/deploy-test/test.env. Then, over
the published web port only: /health, an API token made with `compose exec`, a funded wallet, a
triggered subscription paid on chain; a batch of payments with `compose restart worker` in the
middle, and an audit that every payment was charged exactly once (the token's Transfer events
on the chain, the payments API and the jobs). Finally the properties of the deployment that
are checked: non-root, read-only root filesystem, health checks, warm shutdown of workers,
key=value access logs, migrations run once. `compose down -v` always runs at the end.

Figures (seconds) are printed and written to var/deploy-test/figures.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autopay.devtools.anvil import ANVIL_DEV_KEYS, anvil_binary, free_port  # noqa: E402

PROJECT = "autopay-deploytest"
WORKDIR = REPO / "var" / "deploy-test"
OVERRIDE = REPO / "docker" / "compose.deploy-test.yaml"
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
USERNAME = "deploy-test"
WORKERS = 2
T = TypeVar("T")


class DeployTestError(AssertionError):
    pass


def say(message: str) -> None:
    print(f"    deploy: {message}", file=sys.stderr, flush=True)


def check(condition: object, message: str) -> None:
    if not condition:
        raise DeployTestError(message)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as error:
            last_error, value = error, None
        if value:
            return value
        time.sleep(every)
    raise DeployTestError(f"timed out after {timeout:.0f} s waiting for {what} ({last_error})")


class Stack:
    """`<compose> -p PROJECT --env-file ENV -f compose.yaml -f OVERRIDE ...` and HTTP helpers."""

    def __init__(self, compose: list[str], env_file: Path, web_port: int, anvil_port: int):
        self.compose_command = compose
        self.env_file = env_file
        self.web = f"http://127.0.0.1:{web_port}"
        self.anvil = f"http://127.0.0.1:{anvil_port}"
        self.token = ""
        # Only what compose needs from this shell: nothing else may leak into interpolation.
        keep = ("PATH", "HOME", "LANG", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT")
        self.env = {name: os.environ[name] for name in keep if name in os.environ}

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [
            *self.compose_command,
            "--project-name", PROJECT,
            "--env-file", str(self.env_file),
            "--file", str(REPO / "compose.yaml"),
            "--file", str(OVERRIDE),
            *args,
        ]  # fmt: skip
        result = subprocess.run(
            command,
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise DeployTestError(
                f"{shlex.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return result

    def exec(self, service: str, *command: str, env: dict[str, str] | None = None) -> str:
        options = [part for item in (env or {}).items() for part in ("-e", "=".join(item))]
        return self.compose("exec", "-T", *options, service, *command, timeout=120).stdout

    def http(self, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
        headers = {"Accept": "application/json", "Host": "localhost"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Token {self.token}"
        request = urllib.request.Request(self.web + path, data, headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def api(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, payload = self.http(method, path, body)
        check(status == expect, f"{method} {path} answered {status}, not {expect}: {payload}")
        return payload

    def rpc(self, method: str, params: list[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(self.anvil, body.encode(), headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer = json.loads(response.read())
        if "error" in answer:
            raise DeployTestError(f"{method}: {answer['error']}")
        return answer["result"]

    def containers(self, service: str) -> list[dict[str, Any]]:
        filters = [
            "--filter", f"label=com.docker.compose.project={PROJECT}",
            "--filter", f"label=com.docker.compose.service={service}",
        ]  # fmt: skip
        ids = subprocess.run(
            ["docker", "ps", "--all", "--quiet", *filters],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not ids:
            return []
        inspected = subprocess.run(
            ["docker", "inspect", *ids], capture_output=True, text=True, check=True
        ).stdout
        return list(json.loads(inspected))

    def logs(self, service: str) -> str:
        result = self.compose("logs", "--no-color", service, timeout=60, check=False)
        return result.stdout + result.stderr


def random_address() -> str:
    from eth_utils import to_checksum_address

    return str(to_checksum_address("0x" + secrets.token_hex(20)))


def write_env(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    path.chmod(0o600)


def env_values(args: argparse.Namespace, web_port: int, anvil_port: int) -> dict[str, str]:
    from cryptography.fernet import Fernet

    return {
        # compose.yaml's own variables: the images and where the env file is.
        "AUTOPAY_ENV_FILE": str(WORKDIR / "test.env"),
        "AUTOPAY_IMAGE": args.image,
        "PYTHON_IMAGE": args.python_image,
        "POSTGRES_IMAGE": args.postgres_image,
        "REDIS_IMAGE": args.redis_image,
        "WEB_PORT": f"127.0.0.1:{web_port}",
        "WEB_CONCURRENCY": "2",
        "WORKER_CONCURRENCY": "2",
        # docker/compose.deploy-test.yaml's.
        "DEBIAN_IMAGE": args.debian_image,
        "ANVIL_BINARY": str(anvil_binary()),
        "ANVIL_HOST_PORT": str(anvil_port),
        # Throwaway secrets; the relayer is anvil's public development account 1.
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "AUTOPAY_KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "RELAYER_PRIVATE_KEY": ANVIL_DEV_KEYS[1],
        "POSTGRES_PASSWORD": secrets.token_hex(24),
        "METRICS_TOKEN": secrets.token_hex(16),
        "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1",
        # Plain HTTP on the loopback interface: no TLS proxy in front here.
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_TRUSTED_PROXY": "false",
        # A development chain: the token's deploy and mint commands (autopay.devtools) are on.
        "AUTOPAY_DEV_TOOLS": "true",
        "CHAIN_RPC_URL": "http://anvil:8545",
        "CHAIN_ID": "31337",
        "API_THROTTLE_WALLET_CREATE": "",
        "LOG_LEVEL": "INFO",
    }


# --- the steps ------------------------------------------------------------------------------------


def start_chain_and_token(stack: Stack, values: dict[str, str]) -> str:
    stack.compose("up", "--detach", "--no-build", "anvil")
    wait_for("anvil", lambda: stack.rpc("eth_chainId", []) == hex(31337), timeout=60)
    output = stack.compose(
        "run", "--rm", "--no-deps", "-T", "migrate", "python", "manage.py", "autopay_deploy_token"
    ).stdout
    token = output.strip().splitlines()[-1].strip()
    check(re.fullmatch(r"0x[0-9a-fA-F]{40}", token), f"no token address in {output!r}")
    values["TOKEN_ADDRESS"] = token
    write_env(stack.env_file, values)
    return token


def health(stack: Stack) -> dict[str, Any] | None:
    for service in ("web", "migrate"):
        for container in stack.containers(service):
            if container["RestartCount"] or container["State"]["ExitCode"] not in (0, None):
                tail = "\n".join(stack.logs(service).splitlines()[-15:])
                raise DeployTestError(f"{service} exits instead of serving:\n{tail}")
    status, body = stack.http("GET", "/health", auth=False)
    return body if status == 200 and isinstance(body, dict) else None


def create_api_token(stack: Stack) -> None:
    password = secrets.token_urlsafe(16)
    stack.exec(
        "web",
        "python", "manage.py", "createsuperuser", "--noinput",
        env={
            "DJANGO_SUPERUSER_USERNAME": USERNAME,
            "DJANGO_SUPERUSER_EMAIL": "deploy-test@example.com",
            "DJANGO_SUPERUSER_PASSWORD": password,
        },
    )  # fmt: skip
    output = stack.exec("web", "python", "manage.py", "autopay_create_token", USERNAME)
    stack.token = output.strip().splitlines()[-1].strip()
    check(len(stack.token) >= 20, f"autopay_create_token printed {output!r}")


def create_wallets(stack: Stack, count: int, amount: str) -> list[dict[str, Any]]:
    wallets = [
        stack.api("POST", "/api/wallets/", {"label": f"deploy test {index}"}, expect=201)
        for index in range(count)
    ]
    # One process mints to all of them, through the project's own command.
    calls = "; ".join(
        f"call_command('autopay_mint', '{wallet['address']}', '{amount}')" for wallet in wallets
    )
    stack.exec(
        "web",
        "python", "manage.py", "shell", "-c",
        f"from django.core.management import call_command; {calls}",
    )  # fmt: skip
    return wallets


def create_subscription(stack: Stack, wallet: dict[str, Any], amount: str) -> dict[str, Any]:
    body = {
        "service_name": f"deploy test {secrets.token_hex(3)}",
        "wallet": wallet["id"],
        "recipient_address": random_address(),
        "amount": amount,
        "interval_unit": "month",
        "interval_count": 1,
    }
    subscription = stack.api("POST", "/api/subscriptions/", body, expect=201)
    subscription["_recipient"] = body["recipient_address"].lower()
    subscription["_payer"] = wallet["address"].lower()
    subscription["_amount"] = amount
    return dict(subscription)


def trigger(stack: Stack, subscription: dict[str, Any]) -> str:
    answer = stack.api("POST", f"/api/subscriptions/{subscription['id']}/trigger-payment")
    return str(answer["data"]["jobId"])


def job(stack: Stack, job_id: str) -> dict[str, Any]:
    return dict(stack.api("GET", f"/api/jobs/{job_id}")["data"])


def transfers(stack: Stack, token: str) -> list[tuple[str, str, int, str]]:
    """(from, to, value, transaction hash) of every Transfer of the token."""
    logs = stack.rpc(
        "eth_getLogs",
        [{"address": token, "fromBlock": "0x0", "toBlock": "latest", "topics": [TRANSFER_TOPIC]}],
    )
    return [
        (
            "0x" + log["topics"][1][-40:],
            "0x" + log["topics"][2][-40:],
            int(log["data"], 16),
            log["transactionHash"].lower(),
        )
        for log in logs
    ]


def all_payments(stack: Stack) -> list[dict[str, Any]]:
    payments: list[dict[str, Any]] = []
    path: str | None = "/api/payments/?page_size=500"
    while path:
        page = stack.api("GET", path)
        payments.extend(page["results"])
        next_url = page.get("next")
        path = None
        if next_url:
            parts = urllib.parse.urlsplit(next_url)
            path = f"{parts.path}?{parts.query}"
    return payments


def audit(stack: Stack, token: str, subscriptions: list[dict[str, Any]], jobs: list[str]) -> None:
    """Exactly one charge per payment: on chain, in the payments API, in the jobs."""
    payers = {subscription["_payer"] for subscription in subscriptions}
    charges = [item for item in transfers(stack, token) if item[0] in payers]
    by_pair = Counter((payer, recipient) for payer, recipient, _, _ in charges)
    for subscription in subscriptions:
        pair = (subscription["_payer"], subscription["_recipient"])
        check(by_pair[pair] == 1, f"subscription {subscription['id']}: {by_pair[pair]} charges")
    check(
        len(charges) == len(subscriptions),
        f"{len(charges)} transfers from the payers for {len(subscriptions)} payments",
    )
    amounts = {
        (s["_payer"], s["_recipient"]): int(Decimal(s["_amount"]) * 10**6) for s in subscriptions
    }
    for payer, recipient, value, _ in charges:
        check(value == amounts[(payer, recipient)], f"{payer}->{recipient}: wrong amount {value}")

    ids = {subscription["id"] for subscription in subscriptions}
    payments = [p for p in all_payments(stack) if p["subscription"] in ids]
    per_subscription = Counter(payment["subscription"] for payment in payments)
    check(
        all(per_subscription[i] == 1 for i in ids),
        f"payments per subscription: {per_subscription}",
    )
    check(all(p["status"] == "completed" for p in payments), "a payment is not completed")
    chain_hashes = {tx for *_, tx in charges}
    api_hashes = {str(p["transaction_hash"]).lower() for p in payments}
    check(api_hashes == chain_hashes, "payment transaction hashes differ from the chain's")

    job_hashes = [str(job(stack, job_id)["result"]["transactionHash"]).lower() for job_id in jobs]
    check(len(set(job_hashes)) == len(jobs), "two jobs report the same transaction")
    check(set(job_hashes) <= chain_hashes, "a job reports a transaction that is not on chain")


def check_deployment_properties(stack: Stack, figures: dict[str, Any], metrics_token: str) -> None:
    found: dict[str, str] = {}
    for service in ("web", "worker", "beat"):
        uid = stack.exec(service, "id", "-u").strip()
        check(uid not in ("", "0"), f"{service} runs as root")
        found[f"{service} user id"] = uid
        # Outputs, not exit codes: some compose wrappers do not pass those on.
        probe = "touch /app/probe 2>/dev/null && echo writable || echo read-only"
        check(
            stack.exec(service, "sh", "-c", probe).strip() == "read-only",
            f"{service}: the root filesystem is writable",
        )
        probe = "touch /tmp/probe && rm /tmp/probe && echo writable"
        check(stack.exec(service, "sh", "-c", probe).strip() == "writable", f"{service}: /tmp")
        for container in stack.containers(service):
            check(container["HostConfig"]["ReadonlyRootfs"], f"{service}: not read_only")
    found["root filesystem"] = "read-only (only /tmp writable, tmpfs)"

    # Health: the engine's view (compose's depends_on waits on these), and the probes themselves.
    for service in ("postgres", "redis"):
        states = [c["State"].get("Health", {}).get("Status") for c in stack.containers(service)]
        check(states == ["healthy"], f"{service} health: {states}")
    wait_for(
        "web to be reported healthy by the engine",
        lambda: [
            c["State"].get("Health", {}).get("Status") for c in stack.containers("web")
        ] == ["healthy"],
        timeout=60,
        every=1,
    )  # fmt: skip
    probe = "python /app/docker/healthcheck.py && echo healthy"
    check(stack.exec("web", "sh", "-c", probe).strip() == "healthy", "web's health check fails")
    workers = stack.containers("worker")
    check(len(workers) == WORKERS, f"{len(workers)} worker containers")
    for container in workers:
        # The worker's own health check command, in each replica.
        index = container["Config"]["Labels"]["com.docker.compose.container-number"]
        ping = stack.compose(
            "exec", "-T", "--index", index, "worker", "celery", "-A", "config", "inspect",
            "ping", "--destination", f"celery@{container['Config']['Hostname']}",
            "--timeout", "10",
        ).stdout  # fmt: skip
        check("pong" in ping, f"worker {index} does not answer inspect ping: {ping}")
    found["health checks"] = "postgres, redis, web healthy; worker answers inspect ping"

    # Migrations: one container ran them, once, and exited 0; nothing else migrated.
    migrate = stack.containers("migrate")
    check(len(migrate) == 1, f"{len(migrate)} migrate containers")
    check(migrate[0]["State"]["ExitCode"] == 0, "migrate did not exit 0")
    check(migrate[0]["RestartCount"] == 0, "migrate was restarted")
    migrate_log = stack.logs("migrate")
    check("Applying " in migrate_log, "the migrate container applied nothing")
    for service in ("web", "worker", "beat"):
        check("Applying " not in stack.logs(service), f"{service} ran migrations")
    found["migrations"] = "once, by the migrate container (exit 0)"

    # Logs: gunicorn's access log is key=value on stdout.
    access = [line for line in stack.logs("web").splitlines() if "logger=gunicorn.access" in line]
    check(access, "no access log line from gunicorn")
    check(
        # The healthcheck probes liveness (/health/live).
        re.search(
            r'method=GET path="/health(/live)?" status=200 bytes=\d+ duration_ms=\d+', access[-1]
        ),
        f"access log line is not key=value: {access[-1]}",
    )
    found["access log"] = access[-1].split("| ", 1)[-1][:160]
    app_lines = [line for line in stack.logs("worker").splitlines() if "INFO" in line]
    found["worker log"] = app_lines[-1].split("| ", 1)[-1][:160] if app_lines else ""

    status, _ = stack.http("GET", "/metrics", auth=False)
    check(status in (401, 403), f"/metrics without a token answered {status}")
    request = urllib.request.Request(  # noqa: S310
        stack.web + "/metrics", headers={"Authorization": f"Bearer {metrics_token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        check(b"autopay_" in response.read(), "/metrics with the token shows no autopay_ metric")
    found["metrics"] = f"/metrics closed without METRICS_TOKEN ({status}), open with it"
    figures["checks"] = found


def restart_workers_mid_load(
    stack: Stack, subscriptions: list[dict[str, Any]], figures: dict[str, Any]
) -> list[str]:
    started = time.monotonic()
    jobs = [trigger(stack, subscription) for subscription in subscriptions]

    def some_done() -> dict[str, int] | None:
        states = Counter(job(stack, job_id)["status"] for job_id in jobs)
        return dict(states) if states["completed"] >= 1 else None

    states_before = wait_for("the first payment of the batch", some_done, timeout=120, every=0.3)
    restart_started = time.monotonic()
    stack.compose("restart", "worker", timeout=400)
    figures["worker restart seconds"] = round(time.monotonic() - restart_started, 1)
    figures["jobs at the restart"] = states_before
    check(states_before.get("completed", 0) < len(jobs), "the batch finished before the restart")

    def all_done() -> bool:
        states = [job(stack, job_id)["status"] for job_id in jobs]
        failed = [state for state in states if state == "failed"]
        check(not failed, f"{len(failed)} jobs failed")
        return all(state == "completed" for state in states)

    wait_for("every payment of the batch", all_done, timeout=300, every=1)
    figures["batch seconds"] = round(time.monotonic() - started, 1)
    logs = stack.logs("worker")
    warm = logs.count("Warm shutdown")
    check(warm >= WORKERS, f"{warm} warm shutdowns in the worker logs for {WORKERS} workers")
    check("Cold shutdown" not in logs, "a worker was shut down cold")
    check("SIGKILL" not in logs, "a worker process was killed")
    return jobs


def run(args: argparse.Namespace) -> dict[str, Any]:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    web_port, anvil_port = free_port(), free_port()
    while anvil_port == web_port:
        anvil_port = free_port()
    stack = Stack(shlex.split(args.compose), WORKDIR / "test.env", web_port, anvil_port)
    values = env_values(args, web_port, anvil_port)
    write_env(stack.env_file, values)
    figures: dict[str, Any] = {}
    # Leftovers of an interrupted run.
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
    try:
        say("starting anvil and deploying the token")
        token = start_chain_and_token(stack, values)

        say(f"docker compose up (web on 127.0.0.1:{web_port}, {WORKERS} workers)")
        up_started = time.monotonic()
        stack.compose("up", "--detach", "--no-build", "--scale", f"worker={WORKERS}", timeout=400)
        body = wait_for("/health", lambda: health(stack), timeout=180, every=0.25)
        figures["time to healthy"] = round(time.monotonic() - up_started, 1)
        check(body.get("payments") == "ok", f"/health: {body}")
        say(f"healthy after {figures['time to healthy']} s: {json.dumps(body)[:200]}")

        say("API token, wallet, funds, subscription, payment")
        create_api_token(stack)
        wallet = create_wallets(stack, 1, "100")[0]
        first = create_subscription(stack, wallet, "1.25")
        triggered = time.monotonic()
        first_job = trigger(stack, first)
        done = wait_for(
            "the first payment",
            lambda: (lambda j: j if j["status"] == "completed" else None)(job(stack, first_job)),
            timeout=120,
            every=0.2,
        )
        figures["first payment seconds (trigger to completed)"] = round(
            time.monotonic() - triggered, 1
        )
        figures["time to first payment"] = round(time.monotonic() - up_started, 1)
        tx = done["result"]["transactionHash"]
        receipt = stack.rpc("eth_getTransactionReceipt", [tx])
        check(receipt and receipt["status"] == "0x1", f"transaction {tx} failed: {receipt}")
        say(f"first payment on chain in {tx} (block {int(receipt['blockNumber'], 16)})")

        say(f"{args.payments} payments, docker compose restart worker in the middle")
        payers = create_wallets(stack, args.wallets, "1000")
        batch = [
            create_subscription(stack, payers[index % len(payers)], f"{1 + index % 7}.5")
            for index in range(args.payments)
        ]
        batch_jobs = restart_workers_mid_load(stack, batch, figures)
        audit(stack, token, [first, *batch], [first_job, *batch_jobs])
        say(f"audit: {args.payments + 1} payments, each charged once on chain")

        check_deployment_properties(stack, figures, values["METRICS_TOKEN"])

        say("docker compose stop: each app container stops by itself on SIGTERM")
        stop_started = time.monotonic()
        stack.compose("stop", timeout=400)
        figures["stop seconds"] = round(time.monotonic() - stop_started, 1)
        for service in ("web", "worker", "beat"):
            for container in stack.containers(service):
                code = container["State"]["ExitCode"]
                check(code == 0, f"{service} exited {code} on SIGTERM (137: killed)")
        figures["checks"]["shutdown"] = "web, workers and beat exit 0 on SIGTERM (warm)"
        return figures
    except BaseException:
        ps = stack.compose("ps", timeout=60, check=False)
        print(ps.stdout, file=sys.stderr)
        say(f"compose logs: {WORKDIR / 'compose.log'}")
        raise
    finally:
        (WORKDIR / "compose.log").write_text(
            stack.compose("logs", "--no-color", "--timestamps", timeout=120, check=False).stdout
        )
        down_started = time.monotonic()
        stack.compose("down", "--volumes", "--remove-orphans", timeout=300, check=False)
        figures["down seconds"] = round(time.monotonic() - down_started, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compose", required=True, help='"docker compose" or "docker-compose"')
    parser.add_argument("--image", required=True)
    parser.add_argument("--python-image", required=True)
    parser.add_argument("--postgres-image", required=True)
    parser.add_argument("--redis-image", required=True)
    parser.add_argument("--debian-image", required=True)
    parser.add_argument("--wallets", type=int, default=4)
    parser.add_argument("--payments", type=int, default=24)
    args = parser.parse_args()
    try:
        figures = run(args)
    except DeployTestError as error:
        say(f"FAILED: {error}")
        return 1
    (WORKDIR / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in figures.items():
        if name != "checks":
            say(f"{name}: {value}")
    for name, value in figures.get("checks", {}).items():
        say(f"  {name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
