"""Idempotent POSTs (``Idempotency-Key``, Stripe's semantics) for every API operation."""
