"""The CSV columns of payments (API ``?format=csv`` and the admin's export action)."""

from __future__ import annotations

from core.export import Column

PAYMENT_CSV_COLUMNS = (
    Column("id", "id", "number"),
    Column("subscription_id", "subscription_id", "number"),
    Column("service_name", "subscription__service_name"),
    Column("period_index", "period_index", "number"),
    Column("period_start", "period_start", "time"),
    Column("period_end", "period_end", "time"),
    Column("amount", "amount", "amount"),
    Column("token_symbol", "network", "symbol"),
    Column("token_decimals", "token_decimals", "number"),
    Column("token_address", "token_address"),
    Column("network", "network"),
    Column("payer_address", "payer_address"),
    Column("recipient_address", "recipient_address"),
    Column("status", "status"),
    Column("transaction_hash", "transaction_hash"),
    Column("block_number", "block_number", "number"),
    Column("error_code", "error_code"),
    Column("created_at", "created_at", "time"),
    Column("submitted_at", "submitted_at", "time"),
    Column("completed_at", "completed_at", "time"),
)
