"""Pytest plugin: a live anvil chain, web3, the deployed token and per-test snapshots.

Register with ``pytest_plugins = ["tests.chain.fixtures"]`` in the root conftest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract
from web3.types import RPCEndpoint

from autopay.devtools.anvil import ANVIL_DEV_KEYS, AnvilProcess, ensure_node_modules
from autopay.devtools.contracts import deploy_multicall, deploy_token, mint, token_contract

#: Default amount minted by ``funded_account``: 1,000 tokens of 6 decimals.
DEFAULT_FUNDING_ATOMIC = 1_000 * 10**6


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilProcess]:
    """A local anvil node (instant mining, chain id 31337) on a free port, for the session."""
    ensure_node_modules()
    node = AnvilProcess()
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def w3(anvil: AnvilProcess) -> Web3:
    web3 = Web3(Web3.HTTPProvider(anvil.rpc_url, request_kwargs={"timeout": 30}))
    assert web3.is_connected(), f"cannot reach anvil at {anvil.rpc_url}"
    return web3


@pytest.fixture(scope="session")
def deployer(w3: Web3) -> LocalAccount:
    """Anvil dev account 0: deploys the token; owner and minter."""
    return Account.from_key(ANVIL_DEV_KEYS[0])


@pytest.fixture(scope="session")
def relayer(w3: Web3) -> LocalAccount:
    """Anvil dev account 1: an ETH-funded relayer that submits meta-transactions."""
    return Account.from_key(ANVIL_DEV_KEYS[1])


@pytest.fixture(scope="session")
def token_address(w3: Web3, deployer: LocalAccount) -> ChecksumAddress:
    """AutoPayUSD ("USD Coin"/"USDC", EIP-712 version "2") deployed once per session."""
    return deploy_token(w3, deployer.key)


@pytest.fixture(scope="session")
def multicall_address(w3: Web3, deployer: LocalAccount) -> ChecksumAddress:
    """AutoPayMulticall (Multicall3's aggregate3), which batches are settled through."""
    return deploy_multicall(w3, deployer.key)


@pytest.fixture(scope="session")
def token(w3: Web3, token_address: ChecksumAddress) -> Contract:
    return token_contract(w3, token_address)


@pytest.fixture
def chain_snapshot(w3: Web3) -> Iterator[str]:
    """Take an ``evm_snapshot`` before the test and ``evm_revert`` to it afterwards."""
    snapshot_id = w3.provider.make_request(RPCEndpoint("evm_snapshot"), [])["result"]
    try:
        yield snapshot_id
    finally:
        reverted = w3.provider.make_request(RPCEndpoint("evm_revert"), [snapshot_id]).get("result")
        assert reverted, f"evm_revert({snapshot_id}) failed"


@pytest.fixture
def funded_account(
    w3: Web3, token_address: ChecksumAddress, deployer: LocalAccount, chain_snapshot: str
) -> Callable[..., LocalAccount]:
    """Factory: ``funded_account(amount_atomic=...)`` -> a fresh account holding that many
    token units (no ETH). Minting is undone by the test's chain snapshot."""

    def factory(amount_atomic: int = DEFAULT_FUNDING_ATOMIC) -> LocalAccount:
        account: LocalAccount = Account.create()
        if amount_atomic:
            mint(w3, token_address, deployer.key, account.address, amount_atomic)
        return account

    return factory
