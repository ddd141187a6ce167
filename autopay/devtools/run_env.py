"""The small decisions of ``bin/run``'s set-up, in Python rather than shell (each is one command
``bin/run`` waits for, so that a signal stops it at once):

* ``ports NAME=DEFAULT ...``: a port per name, the default when it is free, else a free one (a
  second checkout, or the test suite, may hold the default), printed as shell assignments;
* ``redis-db URL OWNER``: the Redis database this checkout uses on a shared server: the one
  it claimed before, else the first empty one of 1-14 (0 is anybody's, 15 the tests');
* ``wait-chain URL PID``: wait until the chain answers; fail at once if its process exited;
* ``has-code URL ADDRESS``: is a contract deployed there;
* ``alive PID ...``: have all these processes kept running;
* ``dev-env PATH``: the development secrets, generated once, kept in PATH.

No Django and no web3: these run before the settings can be loaded, and each is a process of
its own that must start fast.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
from cryptography.fernet import Fernet

from autopay.devtools.anvil import free_port, has_code, is_rpc_alive, port_is_free

# The Redis key that marks a database as one checkout's (its var directory).
CLAIM_KEY = "autopay:run:owner"
# Databases bin/run may claim: 0 is the server's default (anything may use it), 15 the tests'.
RUN_DATABASES = range(1, 15)

_SECRETS: dict[str, Callable[[], str]] = {
    "DJANGO_SECRET_KEY": lambda: "dev-" + secrets.token_urlsafe(40),
    "AUTOPAY_KEY_ENCRYPTION_KEY": lambda: Fernet.generate_key().decode(),
    "DEMO_OPERATOR_PASSWORD": lambda: secrets.token_urlsafe(12),
    # The demo user's API token (not staff), kept across runs (the database holds its digest).
    "DEMO_USER_API_TOKEN": lambda: secrets.token_hex(32),
}


def ports(assignments: Sequence[str]) -> list[str]:
    """``NAME=DEFAULT`` -> ``NAME=PORT``: the default if nothing listens there, else a free one."""
    chosen: list[str] = []
    taken: set[int] = set()
    for assignment in assignments:
        name, _, default = assignment.partition("=")
        port = int(default)
        if port and (port in taken or not port_is_free(port)):
            port = free_port()
            while port in taken:
                port = free_port()
        taken.add(port)
        chosen.append(f"{name}={port}")
    return chosen


def redis_database(url: str, owner: str) -> int:
    """The database of ``owner`` (a var directory) on the server at ``url``: the one it
    claimed, else the first empty one, claimed now."""
    empty: int | None = None
    for number in RUN_DATABASES:
        client = redis.Redis.from_url(url, db=number, socket_connect_timeout=2)
        try:
            claimed = client.get(CLAIM_KEY)
            if claimed is not None and claimed.decode() == owner:
                return number
            if empty is None and claimed is None and client.dbsize() == 0:
                empty = number
        finally:
            client.close()
    if empty is None:
        raise SystemExit("no free Redis database among 1-14: set REDIS_URL")
    client = redis.Redis.from_url(url, db=empty, socket_connect_timeout=2)
    try:
        client.set(CLAIM_KEY, owner)
    finally:
        client.close()
    return empty


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited: its parent has not reaped it yet


def wait_chain(url: str, pid: int, *, timeout: float = 60.0) -> int:
    """0 once ``url`` answers; 3 if process ``pid`` (its anvil) exited first; 2 on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_rpc_alive(url):
            return 0
        if not _alive(pid):
            return 3
        time.sleep(0.2)
    return 2


def dev_env(path: Path) -> None:
    """Append the secrets ``path`` lacks (created private)."""
    present = set()
    if path.exists():
        present = {line.split("=", 1)[0] for line in path.read_text().splitlines() if "=" in line}
    missing = [f"{name}={make()}\n" for name, make in _SECRETS.items() if name not in present]
    if missing:
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as out:
            out.writelines(missing)
    path.chmod(0o600)


def main(argv: Sequence[str]) -> int:
    command, *args = argv
    if command == "ports":
        print("\n".join(ports(args)))
        return 0
    if command == "redis-db":
        print(redis_database(args[0], args[1]))
        return 0
    if command == "wait-chain":
        return wait_chain(args[0], int(args[1]))
    if command == "alive":
        return 0 if all(_alive(int(pid)) for pid in args) else 1
    if command == "has-code":
        return 0 if has_code(args[0], args[1]) else 1
    if command == "dev-env":
        dev_env(Path(args[0]))
        return 0
    print(f"unknown command {command!r}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
