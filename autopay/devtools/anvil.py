"""The one place that owns a local anvil node (development chain and tests).

The anvil binary comes from the npm package ``@foundry-rs/anvil`` pinned in ``package.json``;
npm installs the real, prebuilt binary through the platform package
``@foundry-rs/anvil-<os>-<arch>`` (an optional dependency). We run that binary directly, never
the ``node_modules/.bin/anvil`` node wrapper, so that signals reach anvil itself.

Run a node in the foreground for the dev system::

    python -m autopay.devtools.anvil --port 8545 --block-time 1 --state-file .anvil/state.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO_ROOT / "node_modules"
PACKAGE_LOCK = REPO_ROOT / "package-lock.json"

#: Environment variable that, when set, points at an anvil binary to use instead of node_modules.
ANVIL_BINARY_ENV = "AUTOPAY_ANVIL_BINARY"

DEFAULT_CHAIN_ID = 31337
DEFAULT_HOST = "127.0.0.1"

#: The default mnemonic of anvil/hardhat dev nodes. PUBLIC TEST DATA: never use on a real chain.
ANVIL_DEV_MNEMONIC = "test test test test test test test test test test test junk"

#: Private keys of the first 10 accounts anvil derives from ANVIL_DEV_MNEMONIC
#: (m/44'/60'/0'/0/i). These are PUBLIC, well-known test keys printed by every anvil/hardhat
#: node; anything sent to their addresses on a real network is taken by bots. Dev/tests only.
ANVIL_DEV_KEYS: list[str] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
]

_PLATFORM_PACKAGES: dict[tuple[str, str], str] = {
    ("linux", "x86_64"): "anvil-linux-amd64",
    ("linux", "amd64"): "anvil-linux-amd64",
    ("linux", "aarch64"): "anvil-linux-arm64",
    ("linux", "arm64"): "anvil-linux-arm64",
    ("darwin", "x86_64"): "anvil-darwin-amd64",
    ("darwin", "arm64"): "anvil-darwin-arm64",
    ("win32", "amd64"): "anvil-win32-amd64",
    ("win32", "x86_64"): "anvil-win32-amd64",
}


class AnvilError(RuntimeError):
    """Anvil could not be found, installed, started or reached."""


# --------------------------------------------------------------------------- locating the binary


def _binary_name() -> str:
    return "anvil.exe" if sys.platform == "win32" else "anvil"


def _candidate_binaries(node_modules: Path) -> list[Path]:
    scope = node_modules / "@foundry-rs"
    candidates: list[Path] = []
    package = _PLATFORM_PACKAGES.get((sys.platform, platform.machine().lower()))
    if package:
        candidates.append(scope / package / "bin" / _binary_name())
    # Where the package's own postinstall script puts a downloaded fallback binary.
    candidates.append(scope / "anvil" / _binary_name())
    return candidates


def anvil_binary(node_modules: Path | None = None) -> Path:
    """Return the path of the anvil executable installed under ``<repo>/node_modules``.

    ``$AUTOPAY_ANVIL_BINARY`` overrides the lookup. Raises :class:`AnvilError` telling to run
    ``npm ci`` when nothing is installed.
    """
    override = os.environ.get(ANVIL_BINARY_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise AnvilError(f"${ANVIL_BINARY_ENV}={override} is not an executable file")
        return path
    node_modules = node_modules or NODE_MODULES
    candidates = _candidate_binaries(node_modules)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise AnvilError(
        f"anvil binary not found (looked for {tried}). Install the pinned npm packages with "
        f"`npm ci` in {REPO_ROOT} (or call autopay.devtools.anvil.ensure_node_modules())."
    )


def _node_modules_stale(repo_root: Path) -> str | None:
    """Why node_modules does not match package-lock.json, or None when it does."""
    node_modules = repo_root / "node_modules"
    lock_path = repo_root / "package-lock.json"
    if not node_modules.is_dir():
        return "node_modules is missing"
    try:
        lock = json.loads(lock_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AnvilError(f"cannot read {lock_path}: {exc}") from exc
    for rel, meta in lock.get("packages", {}).items():
        if not rel.startswith("node_modules/"):
            continue
        manifest = repo_root / rel / "package.json"
        if not manifest.is_file():
            if meta.get("optional"):
                continue  # another platform's binary package
            return f"{rel} is missing"
        try:
            installed = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError):
            return f"{manifest} is unreadable"
        if installed != meta.get("version"):
            return f"{rel} is {installed}, package-lock.json wants {meta.get('version')}"
    try:
        anvil_binary(node_modules)
    except AnvilError:
        return "the anvil binary is missing"
    return None


def ensure_node_modules(repo_root: Path | None = None, *, timeout: float = 600.0) -> Path:
    """Run ``npm ci`` in the repo root when node_modules is missing or stale vs the lockfile.

    Safe to call from several processes at once (an exclusive file lock serialises installs).
    Returns the anvil binary path.
    """
    repo_root = repo_root or REPO_ROOT
    if _node_modules_stale(repo_root) is None:
        return anvil_binary(repo_root / "node_modules")
    digest = hashlib.sha256(str(repo_root).encode()).hexdigest()[:16]
    lock_file = Path(tempfile.gettempdir()) / f"autopay-npm-ci-{digest}.lock"
    with open(lock_file, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            reason = _node_modules_stale(repo_root)
            if reason is not None:
                try:
                    proc = subprocess.run(
                        ["npm", "ci", "--no-audit", "--no-fund"],
                        cwd=repo_root,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        check=False,
                    )
                except FileNotFoundError as exc:
                    raise AnvilError(
                        f"{reason} and npm is not installed; install Node.js/npm, then run "
                        f"`npm ci` in {repo_root}"
                    ) from exc
                if proc.returncode != 0:
                    raise AnvilError(
                        f"`npm ci` failed in {repo_root} ({reason}):\n{proc.stderr[-4000:]}"
                    )
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return anvil_binary(repo_root / "node_modules")


# --------------------------------------------------------------------------- RPC helpers


def _rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 2.0) -> Any:
    if not url.startswith(("http://", "https://")):
        raise AnvilError(f"not an HTTP(S) JSON-RPC URL: {url!r}")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        payload = json.loads(response.read())
    if "error" in payload:
        raise AnvilError(f"{method} failed: {payload['error']}")
    return payload["result"]


def is_rpc_alive(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers a JSON-RPC ``eth_chainId`` within ``timeout`` seconds."""
    try:
        return _rpc(url, "eth_chainId", timeout=timeout) is not None
    except (OSError, ValueError, AnvilError, KeyError):
        return False


def has_code(url: str, address: str, timeout: float = 10.0) -> bool:
    """True when a contract is deployed at ``address`` on the chain at ``url``."""
    if not address:
        return False
    try:
        code = _rpc(url, "eth_getCode", [address, "latest"], timeout=timeout)
    except (OSError, ValueError, AnvilError, KeyError):
        return False
    return code not in (None, "0x", "0x0")


def port_is_free(port: int, host: str = DEFAULT_HOST) -> bool:
    """True when nothing listens on ``host:port`` (a TIME_WAIT leftover counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- the process


def _die_with_parent_preexec() -> Any:
    """A preexec_fn that makes the child get SIGKILL if its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def _terminate_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM anvil's process group, then SIGKILL it after ``timeout``; reap the leader."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    with contextlib.suppress(ProcessLookupError):
        if pgid is not None:
            os.killpg(pgid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        if pgid is not None:
            os.killpg(pgid, signal.SIGKILL)
        else:
            proc.kill()
    proc.wait(timeout=10)


class AnvilProcess:
    """A local anvil node run as a child process; use as a context manager.

    ``port=None`` picks a free port. ``block_time=None`` mines a block per transaction
    (instant mining); a number mines on that interval (seconds). ``state_file`` uses anvil's
    ``--state`` (load at start, dump at clean shutdown). The process runs in its own session
    and process group, which :meth:`stop` terminates (also at interpreter exit if forgotten).
    On Linux anvil is also SIGKILLed if the thread that started it dies (PR_SET_PDEATHSIG),
    so start it from a long-lived thread (the main thread in tests and CLIs).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        chain_id: int = DEFAULT_CHAIN_ID,
        block_time: float | None = None,
        accounts: int = 10,
        balance: int = 10_000,
        state_file: str | os.PathLike[str] | None = None,
        hardfork: str | None = None,
        silent: bool = True,
        inherit_output: bool = False,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self.chain_id = chain_id
        self.block_time = block_time
        self.accounts = accounts
        self.balance = balance
        self.state_file = Path(state_file) if state_file is not None else None
        self.hardfork = hardfork
        self.silent = silent
        self.inherit_output = inherit_output
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self._binary = Path(binary) if binary is not None else None
        self._requested_port = port
        self._port: int | None = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise AnvilError("anvil is not started (no port chosen yet)")
        return self._port

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle

    def command(self, port: int) -> list[str]:
        """The anvil command line for ``port``."""
        binary = self._binary or anvil_binary()
        cmd = [
            str(binary),
            "--host",
            self.host,
            "--port",
            str(port),
            "--chain-id",
            str(self.chain_id),
            "--accounts",
            str(self.accounts),
            "--balance",
            str(self.balance),
        ]
        if self.block_time is not None:
            cmd += ["--block-time", _format_seconds(self.block_time)]
        if self.state_file is not None:
            cmd += ["--state", str(self.state_file)]
        if self.hardfork:
            cmd += ["--hardfork", self.hardfork]
        if self.silent:
            cmd.append("--silent")
        cmd += self.extra_args
        return cmd

    def start(self) -> Self:
        """Start anvil and block until it answers ``eth_chainId`` (or raise AnvilError)."""
        if self.running:
            return self
        attempts = 3 if self._requested_port is None else 1
        last_error: AnvilError | None = None
        for _ in range(attempts):
            port = self._requested_port or free_port(self.host)
            try:
                self._spawn(port)
                self._wait_ready()
                return self
            except AnvilError as exc:
                last_error = exc
                self.stop()
        assert last_error is not None
        raise last_error

    def _spawn(self, port: int) -> None:
        if self.state_file is not None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
        if not port_is_free(port, self.host):
            raise AnvilError(f"port {port} on {self.host} is already in use")
        cmd = self.command(port)
        if self.inherit_output:
            stdout: Any = None
        else:
            self._log = tempfile.TemporaryFile(prefix="anvil-")  # noqa: SIM115 (closed in stop)
            stdout = self._log
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent_preexec(),
            close_fds=True,
        )
        self._port = port
        self._finalizer = weakref.finalize(self, _terminate_group, self._proc, 5.0)

    def _output_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return ""
        try:
            self._log.flush()
            self._log.seek(0)
            data = self._log.read()
        except (OSError, ValueError):
            return ""
        return data[-limit:].decode(errors="replace")

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        while True:
            code = self._proc.poll()
            if code is not None:
                raise AnvilError(
                    f"anvil exited with code {code} during startup on port {self._port}:\n"
                    f"{self._output_tail()}"
                )
            if is_rpc_alive(self.rpc_url, timeout=1.0):
                got = int(_rpc(self.rpc_url, "eth_chainId"), 16)
                if got != self.chain_id:
                    raise AnvilError(
                        f"{self.rpc_url} reports chain id {got}, expected {self.chain_id} "
                        "(is another node listening on that port?)"
                    )
                if self._proc.poll() is not None:  # someone else answered on that port
                    continue
                return
            if time.monotonic() > deadline:
                raise AnvilError(
                    f"anvil did not answer eth_chainId on {self.rpc_url} within "
                    f"{self.startup_timeout:g}s:\n{self._output_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate anvil's process group (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _terminate_group(proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._requested_port is None:
            self._port = None

    def wait(self) -> int:
        """Block until anvil exits; return its exit code."""
        if self._proc is None:
            raise AnvilError("anvil is not started")
        return self._proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.rpc_url if self._port is not None else "not started"
        return f"<AnvilProcess {where} chain_id={self.chain_id} pid={self.pid}>"


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run anvil in the foreground until Ctrl-C / SIGTERM (dumping ``--state-file`` on exit)."""
    parser = argparse.ArgumentParser(
        prog="python -m autopay.devtools.anvil", description="Run the local development chain."
    )
    parser.add_argument("--port", type=int, default=8545)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--chain-id", type=int, default=DEFAULT_CHAIN_ID)
    parser.add_argument(
        "--block-time", type=float, default=None, help="seconds per block (default: instant)"
    )
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--balance", type=int, default=10_000, help="ETH per dev account")
    parser.add_argument(
        "--state-file", default=None, help="load state from / dump state to this file (--state)"
    )
    parser.add_argument("--hardfork", default=None)
    parser.add_argument("--verbose", action="store_true", help="let anvil log (no --silent)")
    parser.add_argument(
        "--install", action="store_true", help="run `npm ci` first if node_modules is stale"
    )
    args = parser.parse_args(argv)

    if args.install:
        ensure_node_modules()
    node = AnvilProcess(
        port=args.port,
        host=args.host,
        chain_id=args.chain_id,
        block_time=args.block_time,
        accounts=args.accounts,
        balance=args.balance,
        state_file=args.state_file,
        hardfork=args.hardfork,
        silent=not args.verbose,
        inherit_output=True,
    )
    stop_requested = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            node.start()
        except AnvilError as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
        sys.stderr.write(
            f"anvil listening on {node.rpc_url} (chain id {node.chain_id}, "
            f"{'instant mining' if args.block_time is None else f'block time {args.block_time}s'}"
            f"{', state ' + args.state_file if args.state_file else ''}); Ctrl-C to stop\n"
        )
        while not stop_requested.is_set():
            if not node.running:
                sys.stderr.write("anvil exited unexpectedly\n")
                return 1
            stop_requested.wait(0.5)
        return 0
    finally:
        # SIGTERM lets anvil dump --state before exiting.
        node.stop(timeout=30.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
