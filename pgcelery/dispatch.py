"""Dispatch rules: which task messages a claim's notifications make, and which of them
cannot be sent, and why.

Pure functions of the claimed rows and the registry of listeners: the bridge publishes what
they return, and ``pgcelery.testing`` runs it in the test's process.
"""

from __future__ import annotations

import logging
import typing
from typing import Any

from pgcelery import logs, messages, registry
from pgcelery.registry import Listener

logger = logging.getLogger("pgcelery.bridge")

#: A notification that cannot be dispatched: (row id, position in the row, reason).
Failure = tuple[int, int, str]


def deliveries(rows: list[messages.Row], failed: list[Failure]) -> list[messages.Delivery]:
    """The rows' task messages: one per listener and notification, and for a listener with
    ``batch``, one per batch of its notifications in commit order. Rows that cannot be
    sent join ``failed``."""
    found: list[messages.Delivery] = []
    #: (listener, the outbox row of a failed batch put back in the queue, or None)
    batches: dict[tuple[Listener, int | None], list[messages.Row]] = {}
    for row in rows:
        listeners = targets(row)
        if isinstance(listeners, str):
            failed.append(failure(row, listeners))
            continue
        for listener in listeners:
            if listener.batch is None:
                found.append(messages.Delivery.of(listener, [row]))
            else:
                kept = row.id if row.task_id is not None else None
                batches.setdefault((listener, kept), []).append(row)
    failed_rows = {row_id for row_id, _, _ in failed}
    for (listener, kept), batch in batches.items():
        if kept is None:  # only listeners with ``batch`` are grouped
            size = typing.cast(int, listener.batch)
            found.extend(messages.Delivery.of(listener, batch[start:start + size])
                         for start in range(0, len(batch), size))
        elif kept not in failed_rows:  # else the whole batch stays failed, as it was
            found.append(messages.Delivery.of(listener, batch))
    return found


def targets(row: messages.Row) -> list[Listener] | str:
    """The listeners the row goes to; or why there are none it can be sent to."""
    if row.payload == messages.UNREADABLE:
        return ("malformed outbox row: it holds no notification pgcelery wrote (an empty or "
                "unknown chunk, or a batch item without its id, position or uuid), as a role "
                "calling pgcelery's writer functions with arguments of its own can store")
    listeners = registry.listeners_for(row.channel, row.trigger)
    if row.listener is not None:  # a failed delivery, retried: its listener only
        listeners = [found for found in listeners if found.task_name == row.listener]
    if not listeners:
        return _no_listener_reason(row)
    try:
        messages.check(row)
    except (LookupError, TypeError, ValueError) as exc:
        return f"payload cannot be decoded: {exc}"
    return listeners


def failure(row: messages.Row, reason: str) -> Failure:
    """The row's notification as failed for ``reason``, which is logged."""
    logger.error("Notification %d on %s failed: %s", row.id, row.channel, reason,
                 extra=log_fields(row))
    return (row.id, row.position, reason)


def log_fields(row: messages.Row, task_id: str | None = None,
               listener: str | None = None) -> dict[str, Any]:
    """The JSON log fields of a line about ``row``'s notification."""
    return logs.fields(channel=row.channel, notification=row.id, task_id=task_id,
                       listener=listener)


def _no_listener_reason(row: messages.Row) -> str:
    if row.listener is not None:
        return (
            f"listener {row.listener} of {row.channel} is not registered: deploy it, then "
            "retry the failed delivery, or discard it"
        )
    if row.channel not in registry.registered_channels():
        return (
            f"unknown channel {row.channel!r}: no listener is registered for it in this "
            f"project (listeners are looked for in {registry.where_listeners_live()}); "
            "deploy its listeners, then retry the notification, or discard it"
        )
    return (
        f"no listener for trigger {row.trigger!r} of {row.channel}: the trigger's listeners "
        "were removed; retry the notification once they are back, or discard it"
    )
