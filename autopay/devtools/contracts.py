"""The project's compiled contracts (artifacts built by ``scripts/build_contracts.js``).

Deploying and minting here sign transactions locally with eth_account (EIP-1559 fees) so they
work against any node, not only one that holds unlocked accounts.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, cast

from eth_account import Account
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import Web3Exception
from web3.types import TxParams, TxReceipt, Wei

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"

DEFAULT_TOKEN_NAME = "USD Coin"
DEFAULT_TOKEN_SYMBOL = "USDC"
DEFAULT_EIP712_VERSION = "2"
TOKEN_DECIMALS = 6


class ChainTransactionError(RuntimeError):
    """A transaction was mined but reverted, or was not mined in time."""


@cache
def _load_artifact_cached(name: str) -> str:
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"contract artifact {path} is missing; build it with `npm run build:contracts`"
        )
    return path.read_text(encoding="utf-8")


def load_artifact(name: str = "AutoPayUSD") -> dict[str, Any]:
    """Return the compiled artifact ``autopay/devtools/artifacts/<name>.json`` (a fresh dict).

    Keys: ``contractName``, ``abi``, ``bytecode``, ``deployedBytecode``, ``compiler``,
    ``evmVersion``, ``sourceSha256`` (and ``sourcePath``, ``optimizer``).
    """
    return cast(dict[str, Any], json.loads(_load_artifact_cached(name)))


def eip1559_fees(w3: Web3, *, priority_fee: int | None = None) -> dict[str, Wei]:
    """``maxFeePerGas`` / ``maxPriorityFeePerGas`` for the next block (2x base fee + tip)."""
    latest = w3.eth.get_block("latest")
    base_fee = int(latest.get("baseFeePerGas", 0) or 0)
    if priority_fee is None:
        try:
            priority_fee = int(w3.eth.max_priority_fee)
        except (Web3Exception, ValueError):  # node without eth_maxPriorityFeePerGas
            priority_fee = Web3.to_wei(1, "gwei")
    return {
        "maxPriorityFeePerGas": Wei(priority_fee),
        "maxFeePerGas": Wei(2 * base_fee + priority_fee),
    }


def _base_tx(w3: Web3, sender: ChecksumAddress) -> TxParams:
    return cast(TxParams, {"from": sender, **eip1559_fees(w3)})


def sign_and_send(
    w3: Web3,
    private_key: str | bytes,
    tx: TxParams,
    *,
    timeout: float = 60.0,
    require_success: bool = True,
) -> TxReceipt:
    """Fill nonce/chain id/fees/gas of ``tx``, sign it locally, send it and wait for the receipt.

    Raises :class:`ChainTransactionError` when ``require_success`` and the receipt's status is 0.
    Gas estimation runs the call first, so a reverting call raises web3's
    ``ContractLogicError`` (carrying the revert string) before anything is sent.
    """
    account = Account.from_key(private_key)
    params: dict[str, Any] = dict(tx)
    params.setdefault("from", account.address)
    params.setdefault("chainId", w3.eth.chain_id)
    params.setdefault("nonce", w3.eth.get_transaction_count(account.address, "pending"))
    if "gasPrice" not in params and "maxFeePerGas" not in params:
        params.update(eip1559_fees(w3))
    if "gas" not in params:
        params["gas"] = int(w3.eth.estimate_gas(cast(TxParams, params)) * 12 // 10)
    signed = account.sign_transaction(params)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.05)
    if require_success and receipt["status"] != 1:
        raise ChainTransactionError(f"transaction {tx_hash.to_0x_hex()} reverted")
    return receipt


def deploy_token(
    w3: Web3,
    deployer_private_key: str | bytes,
    *,
    name: str = DEFAULT_TOKEN_NAME,
    symbol: str = DEFAULT_TOKEN_SYMBOL,
    eip712_version: str = DEFAULT_EIP712_VERSION,
    eip712_name: str | None = None,
    timeout: float = 60.0,
) -> ChecksumAddress:
    """Deploy AutoPayUSD; the deployer becomes owner and minter. Returns the token address.

    The EIP-712 domain name defaults to the token ``name`` (as with USDC).
    """
    artifact = load_artifact("AutoPayUSD")
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    deployer = Account.from_key(deployer_private_key)
    tx = factory.constructor(
        name, symbol, eip712_name if eip712_name is not None else name, eip712_version
    ).build_transaction(_base_tx(w3, deployer.address))
    receipt = sign_and_send(w3, deployer_private_key, tx, timeout=timeout)
    address = receipt.get("contractAddress")
    if not address:
        raise ChainTransactionError("deployment receipt has no contractAddress")
    return Web3.to_checksum_address(address)


def deploy_multicall(
    w3: Web3, deployer_private_key: str | bytes, *, timeout: float = 60.0
) -> ChecksumAddress:
    """Deploy AutoPayMulticall (Multicall3's ``aggregate3``) and return its address: the
    batch settlement's entry point on a local chain (CHAIN_MULTICALL_ADDRESS)."""
    artifact = load_artifact("AutoPayMulticall")
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    deployer = Account.from_key(deployer_private_key)
    tx = factory.constructor().build_transaction(_base_tx(w3, deployer.address))
    receipt = sign_and_send(w3, deployer_private_key, tx, timeout=timeout)
    address = receipt.get("contractAddress")
    if not address:
        raise ChainTransactionError("deployment receipt has no contractAddress")
    return Web3.to_checksum_address(address)


def token_contract(w3: Web3, address: str) -> Contract:
    """A web3 contract object for the AutoPayUSD (or any USDC-compatible) token at ``address``."""
    abi = load_artifact("AutoPayUSD")["abi"]
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)


def mint(
    w3: Web3,
    token_address: str,
    minter_key: str | bytes,
    to: str,
    amount_atomic: int,
    *,
    timeout: float = 60.0,
) -> HexBytes:
    """Mint ``amount_atomic`` (6-decimals units) to ``to``; wait for success; return the tx hash."""
    token = token_contract(w3, token_address)
    minter = Account.from_key(minter_key)
    tx = token.functions.mint(Web3.to_checksum_address(to), int(amount_atomic)).build_transaction(
        _base_tx(w3, minter.address)
    )
    receipt = sign_and_send(w3, minter_key, tx, timeout=timeout)
    return HexBytes(receipt["transactionHash"])
