"""A CSV export of 100k payments streams: it is never held in memory whole.

The rows are inserted in one SQL statement (generate_series), then exported through the real
API (filters, scoping, the streaming response) while tracemalloc watches this process: the peak
stays a small fraction of the CSV's own size, and the rows are read in chunks through one
server-side cursor (a handful of queries, not one per row or per page).
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from subscriptions.models import Payment
from tests.factories import SubscriptionFactory

ROWS = 100_000


def _insert_payments(subscription: Any, count: int) -> None:
    table = Payment._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (subscription_id, period_index, period_start, period_end, amount,
                payer_address, recipient_address, token_address, token_decimals, network,
                status, authorization_nonce, transaction_hash, error_code, error_message,
                created_at, updated_at)
            SELECT %s, i, now() - make_interval(mins => i), now() - make_interval(mins => i - 1),
                12.345678 + i / 1000000.0, %s, %s, %s, 6, 'eip155:31337', 'completed', '',
                '0x' || lpad(to_hex(i), 64, '0'), '', '', now(), now()
            FROM generate_series(1, %s) AS i
            """,
            [
                subscription.pk,
                subscription.payer_address,
                subscription.recipient_address,
                subscription.token_address,
                count,
            ],
        )


@pytest.mark.timeout(300)
def test_a_100k_row_csv_export_streams_in_bounded_memory(api: APIClient, user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    _insert_payments(subscription, ROWS)

    started = time.monotonic()
    tracemalloc.start()
    try:
        with CaptureQueriesContext(connection) as queries:
            response: Any = api.get("/api/payments/?format=csv&status=completed")
            assert response.status_code == 200
            assert response.streaming
            size = lines = 0
            last = b""
            for chunk in response.streaming_content:
                size += len(chunk)
                lines += chunk.count(b"\n")
                last = chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.monotonic() - started

    assert lines == ROWS + 1  # the header and every row
    assert b",completed," in last
    # The CSV is ~30 MB; materialising it (or the 100k model instances behind it) would cost
    # far more than this.
    assert size > 25 * 1024 * 1024
    assert peak < 10 * 1024 * 1024, f"peak {peak / 2**20:.1f} MB for a {size / 2**20:.1f} MB CSV"
    # One server-side cursor read in chunks: auth, one count-free SELECT, no query per row.
    assert len(queries) < 10, [query["sql"][:120] for query in queries.captured_queries]
    print(
        f"\n{ROWS} rows, {size / 2**20:.1f} MB CSV in {seconds:.1f} s, peak {peak / 2**20:.2f} MB"
    )
