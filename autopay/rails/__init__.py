"""Payment rails: one module per way of moving money. The engine talks to PaymentRail only."""

from __future__ import annotations

from django.conf import settings

from autopay.rails.base import PaymentIntent, PaymentRail
from autopay.rails.x402_exact import X402ExactRail
from autopay.rails.x402_http import X402HttpRail


def get_rail(intent: PaymentIntent | None = None) -> PaymentRail | None:
    """The configured rail (AUTOPAY_PAYMENT_RAIL), or None when none is configured. A payment
    with a resource_url is paid through the service's own x402 endpoint."""
    name = settings.AUTOPAY_PAYMENT_RAIL
    if name == "x402":
        if intent is not None and intent.resource_url:
            return X402HttpRail.from_settings()
        return X402ExactRail.from_settings()
    return None
