"""AnvilProcess lifecycle, binary lookup and the well-known dev keys."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from autopay.devtools.anvil import (
    ANVIL_DEV_KEYS,
    AnvilError,
    AnvilProcess,
    anvil_binary,
    is_rpc_alive,
)

pytestmark = pytest.mark.chain


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; check its state on Linux.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_dev_keys_are_anvils_default_accounts(w3: Web3) -> None:
    derived = [Account.from_key(key).address for key in ANVIL_DEV_KEYS]
    assert w3.eth.accounts[:10] == derived


def test_session_node(anvil: AnvilProcess, w3: Web3) -> None:
    assert anvil.running and anvil.chain_id == 31337 == w3.eth.chain_id
    assert anvil.rpc_url == f"http://127.0.0.1:{anvil.port}"
    assert is_rpc_alive(anvil.rpc_url)


def test_start_stop_leaves_no_process(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with AnvilProcess(chain_id=4242, block_time=1, accounts=2, state_file=state) as node:
        pid = node.pid
        assert pid is not None and _pid_alive(pid)
        w3 = Web3(Web3.HTTPProvider(node.rpc_url, request_kwargs={"timeout": 10}))
        assert w3.eth.chain_id == 4242
        assert len(w3.eth.accounts) == 2
        first = w3.eth.block_number
        deadline = time.monotonic() + 10
        while w3.eth.block_number == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert w3.eth.block_number > first, "interval mining did not produce a block"
        url = node.rpc_url
    assert not _pid_alive(pid)
    assert not is_rpc_alive(url, timeout=0.5)
    assert state.is_file() and state.stat().st_size > 0, "--state was not dumped on stop"

    # The dumped state is loaded by the next run.
    with AnvilProcess(chain_id=4242, accounts=2, state_file=state) as node:
        w3 = Web3(Web3.HTTPProvider(node.rpc_url, request_kwargs={"timeout": 10}))
        assert w3.eth.block_number >= first + 1


def test_missing_binary_error_tells_to_run_npm_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUTOPAY_ANVIL_BINARY", raising=False)
    with pytest.raises(AnvilError, match="npm ci"):
        anvil_binary(tmp_path / "node_modules")


def test_startup_failure_is_reported(anvil: AnvilProcess) -> None:
    # The session node already holds that port.
    with pytest.raises(AnvilError, match="already in use"):
        AnvilProcess(port=anvil.port, startup_timeout=5).start()
    assert is_rpc_alive(anvil.rpc_url)


def test_early_exit_is_reported() -> None:
    with pytest.raises(AnvilError, match="exited with code"):
        AnvilProcess(extra_args=["--no-such-flag"], startup_timeout=10).start()


def test_stale_node_modules_detection(tmp_path: Path) -> None:
    from autopay.devtools.anvil import _node_modules_stale

    lock = {
        "lockfileVersion": 3,
        "packages": {
            "": {"name": "x"},
            "node_modules/solc": {"version": "0.8.30"},
            "node_modules/@foundry-rs/anvil-win32-amd64": {"version": "1.7.1", "optional": True},
        },
    }
    (tmp_path / "package-lock.json").write_text(json.dumps(lock))
    assert _node_modules_stale(tmp_path) == "node_modules is missing"
    solc = tmp_path / "node_modules" / "solc"
    solc.mkdir(parents=True)
    (solc / "package.json").write_text(json.dumps({"version": "0.8.29"}))
    assert "0.8.29" in str(_node_modules_stale(tmp_path))
    (solc / "package.json").write_text(json.dumps({"version": "0.8.30"}))
    # Versions match (a missing optional package is fine) but there is no anvil binary.
    assert _node_modules_stale(tmp_path) == "the anvil binary is missing"
