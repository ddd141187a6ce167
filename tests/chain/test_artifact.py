"""The committed contract artifact is what the pinned compiler produces from the source."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from autopay.devtools.anvil import REPO_ROOT
from autopay.devtools.contracts import load_artifact

SOURCE = REPO_ROOT / "contracts" / "AutoPayUSD.sol"


def test_artifact_shape_and_source_hash() -> None:
    artifact = load_artifact("AutoPayUSD")
    assert artifact["contractName"] == "AutoPayUSD"
    assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 1000
    assert artifact["deployedBytecode"].startswith("0x")
    assert artifact["compiler"].startswith("0.8.")
    assert artifact["evmVersion"] == "cancun"
    assert artifact["sourceSha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest(), (
        "contracts/AutoPayUSD.sol changed without rebuilding: run `npm run build:contracts`"
    )
    names = {item.get("name") for item in artifact["abi"]}
    assert {
        "transferWithAuthorization",
        "receiveWithAuthorization",
        "cancelAuthorization",
        "authorizationState",
        "permit",
        "nonces",
        "DOMAIN_SEPARATOR",
        "eip712Domain",
        "AuthorizationUsed",
        "AuthorizationCanceled",
    } <= names
    assert not [item for item in artifact["abi"] if item["type"] == "error"], "use revert strings"


def test_fresh_compile_matches_committed_artifact() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (REPO_ROOT / "node_modules" / "solc" / "package.json").is_file():
        from autopay.devtools.anvil import ensure_node_modules

        ensure_node_modules()
    proc = subprocess.run(
        [node, "scripts/build_contracts.js", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
