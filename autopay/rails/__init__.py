"""Payment rails: one module per way of moving money. The engine talks to PaymentRail only."""

from __future__ import annotations

from django.conf import settings

from autopay.rails.base import PaymentRail
from autopay.rails.x402_exact import X402ExactRail


def get_rail() -> PaymentRail | None:
    """The configured rail (AUTOPAY_PAYMENT_RAIL), or None when none is configured."""
    name = settings.AUTOPAY_PAYMENT_RAIL
    if name == "x402":
        return X402ExactRail.from_settings()
    return None
