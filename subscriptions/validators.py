"""Validation shared by the API, the admin and services."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from eth_utils import is_checksum_address, to_checksum_address

from core.networks import network_registry
from subscriptions import periods
from subscriptions.resources import ResourceUrlRefused, resource_destination

ZERO_ADDRESS = "0x" + "0" * 40

_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_CAIP2_EIP155 = re.compile(r"^eip155:[1-9][0-9]{0,18}$")


def validate_checksum_address(value: str) -> None:
    if not isinstance(value, str) or not _HEX_ADDRESS.match(value):
        raise ValidationError("Enter a 0x-prefixed, 20-byte hexadecimal address.", code="address")
    if not is_checksum_address(value):
        raise ValidationError(
            "Address is not EIP-55 checksummed; send it in its mixed-case checksum form.",
            code="checksum",
        )


def validate_network(value: str) -> None:
    if not _CAIP2_EIP155.match(value or ""):
        raise ValidationError(
            "Network must be a CAIP-2 EVM chain id such as eip155:8453.", code="network"
        )
    configured = bool(settings.AUTOPAY_NETWORKS) and value in network_registry()
    if value not in settings.AUTOPAY_SUPPORTED_NETWORKS and not configured:
        supported = ", ".join(settings.AUTOPAY_SUPPORTED_NETWORKS)
        raise ValidationError(
            f"Network {value} is not supported here (supported: {supported}).", code="network"
        )


def validate_amount(value: Decimal, *, decimals: int) -> None:
    if not value.is_finite():
        raise ValidationError("Amount must be a finite decimal number.", code="amount")
    if value <= 0:
        raise ValidationError("Amount must be greater than zero.", code="amount")
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > decimals:
        raise ValidationError(
            f"Amount has more than {decimals} decimal places, the token's precision.",
            code="amount_precision",
        )
    maximum = settings.AUTOPAY_MAX_AMOUNT
    if value > maximum:
        raise ValidationError(
            f"Amount is above this deployment's limit of {format(maximum.normalize(), 'f')} "
            "per period (AUTOPAY_MAX_AMOUNT).",
            code="amount_limit",
        )


def network_tokens() -> dict[str, str]:
    """The allow-list: the networks of AUTOPAY_NETWORKS, or AUTOPAY_NETWORK_TOKENS, or
    TOKEN_ADDRESS on CHAIN_NETWORK."""
    if settings.AUTOPAY_NETWORKS:
        return {
            config.network: config.token_address
            for config in network_registry().values()
            if config.token_address
        }
    if settings.AUTOPAY_NETWORK_TOKENS:
        return dict(settings.AUTOPAY_NETWORK_TOKENS)
    return {settings.CHAIN_NETWORK: settings.TOKEN_ADDRESS} if settings.TOKEN_ADDRESS else {}


def allowed_token(network: str) -> str | None:
    """The token this deployment pays with on ``network`` (the allow-list), if any."""
    token = network_tokens().get(network)
    return to_checksum_address(token) if token else None


def validate_token(token_address: str, *, network: str) -> None:
    """Only the configured token of the network: any other contract could be anything."""
    allowed = allowed_token(network)
    if allowed is None:
        raise ValidationError(
            f"No token is configured for network {network} (AUTOPAY_NETWORK_TOKENS).",
            code="token",
        )
    if to_checksum_address(token_address) != allowed:
        raise ValidationError(
            f"Only the configured token {allowed} can be used on {network}.", code="token"
        )


def validate_recipient(recipient: str, *, payer: str | None, token_address: str | None) -> None:
    """Money must go somewhere real and away from the payer."""
    recipient = to_checksum_address(recipient)
    if recipient == ZERO_ADDRESS:
        raise ValidationError("The recipient cannot be the zero address.", code="recipient")
    if payer and recipient == to_checksum_address(payer):
        raise ValidationError("The recipient cannot be the payer itself.", code="recipient")
    if token_address and recipient == to_checksum_address(token_address):
        raise ValidationError(
            "The recipient cannot be the token contract (tokens sent there are lost).",
            code="recipient",
        )


def validate_billing_anchor(anchor: datetime, *, unit: str, count: int, now: datetime) -> None:
    """No earlier than one interval before now (no back-billing) and at most a year ahead."""
    one_interval_ago = periods.period_start(anchor=now, unit=unit, count=count, index=-1)
    if anchor < one_interval_ago:
        raise ValidationError(
            "billing_anchor is more than one billing interval in the past; periods before now "
            "are not charged retroactively.",
            code="billing_anchor",
        )
    if anchor > now + timedelta(days=366):
        raise ValidationError("billing_anchor is more than a year ahead.", code="billing_anchor")


def validate_resource_url(url: str) -> None:
    """An http(s) URL on a host (and port) the operator allows (AUTOPAY_RESOURCE_ALLOWED_HOSTS):
    the worker requests it, so an arbitrary URL would let a user reach internal addresses. The
    worker checks again, resolved, at every request (subscriptions.resources)."""
    parsed = urlsplit(url or "")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValidationError("resource_url must be an http(s) URL.", code="resource_url")
    try:
        resource_destination(url, resolve=False)
    except ResourceUrlRefused as exc:
        raise ValidationError(exc.message, code="resource_url") from exc
