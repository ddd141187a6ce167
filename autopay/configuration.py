"""Is the operator's payment configuration usable? One answer for /health and the worker.

A missing or wrong encryption key, relayer key or token is the operator's problem, never the
customer's: jobs wait (``configuration_error``) instead of failing, and this module names the
part that needs fixing, without ever printing a secret.
"""

from __future__ import annotations

from django.conf import settings
from eth_account import Account
from eth_utils import is_address

from autopay.chain.relayer import relayer_keys
from autopay.rails.x402_exact import FACILITATOR_CREDENTIALS_REFUSED
from core.networks import network_registry
from jobs.models import Job
from subscriptions.custody import KeyCustodyError, custody_problem, decrypt_private_key
from subscriptions.errors import ConfigurationError
from subscriptions.models import PayerWallet
from subscriptions.validators import network_tokens


def configuration_problems() -> list[str]:
    """What stops payments from being made, one short line per part (empty: all good)."""
    if settings.AUTOPAY_PAYMENT_RAIL == "none":
        return []  # an API-only deployment on purpose: jobs fail with rail_not_configured
    problems: list[str] = []
    custody = custody_problem()
    if custody:
        problems.append(f"wallet keys: {custody}")
    else:
        newest = PayerWallet.objects.order_by("-pk").values_list("encrypted_private_key").first()
        if newest is not None:
            try:
                decrypt_private_key(newest[0])
            except KeyCustodyError:
                problems.append(
                    "wallet keys: the newest wallet's key cannot be decrypted with any key of "
                    "AUTOPAY_KEY_ENCRYPTION_KEYS (a key was changed without rotation)"
                )
    if not settings.X402_FACILITATOR_URL:
        for config in network_registry().values():
            where = "" if not settings.AUTOPAY_NETWORKS else f" of {config.network}"
            keys = relayer_keys(config)
            name = (
                "RELAYER_PRIVATE_KEYS"
                if settings.RELAYER_PRIVATE_KEYS and config.network == settings.CHAIN_NETWORK
                else "RELAYER_PRIVATE_KEY"
            )
            if not keys:
                problems.append(f"relayer: {name}{where} is not set (nobody can pay the gas)")
            for position, key in enumerate(keys, start=1):
                try:
                    Account.from_key(key)
                except (ValueError, TypeError):
                    which = f" (key {position})" if len(keys) > 1 else ""
                    problems.append(f"relayer: {name}{where}{which} is not a valid private key")
    tokens = network_tokens()
    if not tokens:
        problems.append("token: no token is configured (TOKEN_ADDRESS or AUTOPAY_NETWORK_TOKENS)")
    for network, token in tokens.items():
        if not is_address(token):
            problems.append(f"token: the token of {network} is not an address")
    problems.extend(_facilitator_problems())
    waiting = Job.objects.filter(
        status=Job.Status.DELAYED, error_code=ConfigurationError.code
    ).count()
    if waiting:
        problems.append(
            f"jobs: {waiting} job(s) wait for the operator (configuration_error; see their error)"
        )
    return problems


def _facilitator_problems() -> list[str]:
    """The remote facilitator refused our credentials: found by the jobs waiting on it (asking
    it here would make /health a payment request of its own)."""
    if not settings.X402_FACILITATOR_URL:
        return []
    refused = Job.objects.filter(
        status=Job.Status.DELAYED,
        error_code=ConfigurationError.code,
        error__startswith=FACILITATOR_CREDENTIALS_REFUSED,
    ).exists()
    if not refused:
        return []
    return [
        "facilitator: X402_FACILITATOR_URL refused our credentials (HTTP 401/403); check "
        "X402_FACILITATOR_AUTH_HEADER"
    ]
