"""The backlog per channel: pending rows, their oldest age, failed rows and why."""

from __future__ import annotations

import json
from typing import Any

from django.db import connections

from pgcelery import sql

#: Failure reasons listed per channel; the count covers them all.
FAILURES_SHOWN = 20


def channel_status(database: str) -> list[dict[str, Any]]:
    """One entry per channel with rows in the outbox, in the ``pgcelery_status --json`` shape."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql.STATUS, [FAILURES_SHOWN])
        rows = cursor.fetchall()
    return [
        {
            "channel": channel,
            "pending": pending,
            "oldest_pending_seconds": round(float(oldest), 3) if oldest is not None else None,
            "failed": failed,
            "failures": json.loads(failures),
        }
        for channel, pending, oldest, failed, failures in rows
    ]
