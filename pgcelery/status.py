"""The backlog per channel: pending rows, their oldest age, failed rows and why, and the
notifications waiting for their keys."""

from __future__ import annotations

import json
from typing import Any

from django.db import connections

from pgcelery import sql

#: Failure reasons listed per channel; the count covers them all.
FAILURES_SHOWN = 20


def channel_status(database: str) -> list[dict[str, Any]]:
    """One entry per channel with rows in the outbox or notifications waiting, in the
    ``pgcelery_status --json`` shape."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql.STATUS, [FAILURES_SHOWN])
        rows = cursor.fetchall()
        cursor.execute(sql.WAITING_COUNTS)
        waiting: dict[str, int] = {}
        for channel, _, count in cursor.fetchall():
            waiting[channel] = waiting.get(channel, 0) + count
    found = {
        channel: {
            "channel": channel,
            "pending": pending,
            "waiting": waiting.get(channel, 0),
            "oldest_pending_seconds": round(float(oldest), 3) if oldest is not None else None,
            "failed": failed,
            "failures": json.loads(failures),
        }
        for channel, pending, oldest, failed, failures in rows
    }
    for channel in waiting.keys() - found.keys():
        found[channel] = {"channel": channel, "pending": 0, "waiting": waiting[channel],
                          "oldest_pending_seconds": None, "failed": 0, "failures": []}
    return [found[channel] for channel in sorted(found)]
