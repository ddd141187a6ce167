"""Validation shared by the API, the admin and services."""

from __future__ import annotations

import re
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from eth_utils import is_checksum_address

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
    if value not in settings.AUTOPAY_SUPPORTED_NETWORKS:
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
