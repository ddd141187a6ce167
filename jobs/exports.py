"""The CSV columns of jobs (API ``?format=csv`` and the admin's export action)."""

from __future__ import annotations

from core.export import Column

JOB_CSV_COLUMNS = (
    Column("job_id", "id"),
    Column("subscription_id", "subscription_id", "number"),
    Column("service_name", "subscription__service_name"),
    Column("payment_id", "payment_id", "number"),
    Column("amount", "payment__amount", "amount"),
    Column("token_symbol", "payment__network", "symbol"),
    Column("network", "payment__network"),
    Column("payer_address", "payment__payer_address"),
    Column("source", "source"),
    Column("status", "status"),
    Column("progress", "progress", "number"),
    Column("attempts_made", "attempts_made", "number"),
    Column("max_attempts", "max_attempts", "number"),
    Column("error_code", "error_code"),
    Column("error", "error"),
    Column("transaction_hash", "payment__transaction_hash"),
    Column("created_at", "created_at", "time"),
    Column("started_at", "started_at", "time"),
    Column("finished_at", "finished_at", "time"),
)
