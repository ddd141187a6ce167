"""Private service instances a test may stop, kill and restart: a Redis server (with AOF) and
a PostgreSQL cluster, each on a free port in a directory of the test's own. The machine's own
Redis and PostgreSQL are never touched."""

from __future__ import annotations

import collections
import glob
import http.server
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import redis
from eth_typing import HexStr
from web3 import Web3

from autopay.devtools.anvil import free_port


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {timeout}s")


class RedisServer:
    """``redis-server`` on a free port, appending every write to its AOF (fsync every second),
    so that a killed server restarts with its queue."""

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        _wait(answers, 20, f"redis on port {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL, like a crash: what is not in the AOF yet is lost."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def postgres_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    found = candidates[0] if candidates else shutil.which(name)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found


class PostgresCluster:
    """A PostgreSQL cluster of the test's own (initdb into a temporary directory, trust auth on
    127.0.0.1, a free port). Run as the ``postgres`` user when the tests run as root (the
    directory is then its own, under the system's temporary directory, which it can reach)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="autopay-test-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            owner = pwd.getpwnam("postgres")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            list(command),
            user=self._user,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.directory,
        )
        if check and completed.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {completed.stdout}{completed.stderr}")
        return completed

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> PostgresCluster:
        self._run(
            postgres_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        return self

    def start(self) -> PostgresCluster:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            postgres_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "postgres.log"),
            "-w",
            "start",
        )
        _wait(self.answers, 30, f"postgres on port {self.port}")
        return self

    def answers(self) -> bool:
        try:
            psycopg.connect(self.url(), connect_timeout=1).close()
            return True
        except psycopg.Error:
            return False

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects everyone and stops; ``immediate`` is a crash (no checkpoint)."""
        pg_ctl = postgres_bin("pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


class RpcProxy:
    """A JSON-RPC endpoint in front of a real node that the test can take down and bring back
    (the node itself goes on mining): while down it answers 503, which a client sees as the
    RPC being unavailable. ``down_after`` takes it down right after it forwarded a request of
    that method (e.g. once a transaction was broadcast). ``drop_reply_to`` forwards the next
    request of that method and then closes the connection without answering it (the node
    acted on it; the client sees a transport error), keeping the request in ``dropped``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.down = False
        self.down_after: str | None = None
        self.drop_reply_to: str | None = None
        self.dropped: list[dict[str, Any]] = []
        # Requests of these methods wait until ``release`` (a worker stuck at that step).
        self.held: set[str] = set()
        self.waiting = 0
        self._released = threading.Event()
        self._released.set()
        self.port = free_port()
        # JSON-RPC requests forwarded or refused, by method (a batch request counts each).
        self.calls: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.count(body)
                if proxy.down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if proxy.held and any(f'"{method}"'.encode() in body for method in proxy.held):
                    proxy.waiting += 1
                    proxy._released.wait()
                    proxy.waiting -= 1
                request = urllib.request.Request(
                    proxy.upstream, data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = response.read()
                if proxy.down_after and proxy.down_after.encode() in body:
                    proxy.down = True
                    proxy.down_after = None
                if proxy.drop_reply_to and f'"{proxy.drop_reply_to}"'.encode() in body:
                    proxy.drop_reply_to = None
                    proxy.dropped.append(json.loads(body))
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return None  # a client killed mid-request (a SIGKILLed worker) is expected

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, body: bytes) -> None:
        try:
            decoded = json.loads(body)
        except ValueError:
            return
        requests = decoded if isinstance(decoded, list) else [decoded]
        with self._calls_lock:
            for request in requests:
                if isinstance(request, dict):
                    self.calls[str(request.get("method"))] += 1

    def start(self) -> RpcProxy:
        self._thread.start()
        return self

    def dropped_transactions(self) -> list[HexStr]:
        """The hashes of the raw transactions whose broadcast had its reply dropped."""
        return [
            HexStr(Web3.keccak(hexstr=request["params"][0]).to_0x_hex())
            for request in self.dropped
            if request.get("method") == "eth_sendRawTransaction"
        ]

    def hold(self, *methods: str) -> None:
        self._released.clear()
        self.held.update(methods)

    def release(self) -> None:
        self.held.clear()
        self._released.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
