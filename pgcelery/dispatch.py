"""Dispatch rules: which task messages a claim's notifications make, and which of them
cannot be sent, and why.

Pure functions of the claimed rows and the registry of listeners: the bridge publishes what
they return, and ``pgcelery.testing`` runs it in the test's process.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Iterable
from typing import Any

from pgcelery import logs, messages, registry
from pgcelery.registry import Listener

logger = logging.getLogger("pgcelery.bridge")

#: A notification that cannot be dispatched: (row id, position in the row, reason).
Failure = tuple[int, int, str]
#: A notification as a batch names it: (row id, position in the row).
Member = tuple[int, int]


class Formed(typing.NamedTuple):
    """A batch an earlier claim formed (``models.FormedBatch``): it goes again as it was."""

    task_id: str
    listener: str
    members: tuple[Member, ...]


def deliveries(rows: list[messages.Row], failed: list[Failure], formed: Iterable[Formed] = (),
               parked: list[tuple[Listener, messages.Row]] | None = None,
               ) -> list[messages.Delivery]:
    """The rows' task messages: one per listener and notification, and for a listener with
    ``batch``, one per batch of its notifications in commit order, or the batch ``formed``
    holds a notification in. Rows that cannot be sent join ``failed``; with ``parked``,
    the notifications of listeners with key options join it instead, to wait for their
    keys (a failed delivery retried goes at once: it is the one its key waits for)."""
    found: list[messages.Delivery] = []
    #: (listener, the outbox row of a failed batch put back in the queue, or None)
    batches: dict[tuple[Listener, int | None], list[messages.Row]] = {}
    place = {(batch.listener, member): batch for batch in formed for member in batch.members}
    again: dict[str, tuple[Listener, Formed, list[messages.Row]]] = {}
    for row in rows:
        listeners = targets(row)
        if isinstance(listeners, str):
            failed.append(failure(row, listeners))
            continue
        for listener in listeners:
            if parked is not None and listener.keys is not None and row.task_id is None:
                parked.append((listener, row))
                continue
            if listener.batch is None:
                found.append(messages.Delivery.of(listener, [row]))
                continue
            kept = row.id if row.task_id is not None else None
            batch = None if kept is not None else place.get(
                (listener.task_name, (row.id, row.position)))
            if batch is not None:
                again.setdefault(batch.task_id, (listener, batch, []))[2].append(row)
            else:
                batches.setdefault((listener, kept), []).append(row)
    failed_rows = {row_id for row_id, _, _ in failed}
    for (listener, kept), batch_rows in batches.items():
        if kept is None:  # only listeners with ``batch`` are grouped
            size = typing.cast(int, listener.batch)
            found.extend(messages.Delivery.of(listener, batch_rows[start:start + size])
                         for start in range(0, len(batch_rows), size))
        elif kept not in failed_rows:  # else the whole batch stays failed, as it was
            found.append(messages.Delivery.of(listener, batch_rows))
    for listener, batch, batch_rows in again.values():
        order = {member: n for n, member in enumerate(batch.members)}
        batch_rows.sort(key=lambda row: order[(row.id, row.position)])
        found.append(messages.Delivery(listener, batch.task_id, batch_rows))
    return found


def complete(formed: Iterable[Formed], rows: list[messages.Row]) -> tuple[list[Formed], set[int]]:
    """The batches of ``formed`` whose notifications are all in ``rows``, and the rows to
    leave pending: those of a batch missing some (another claim holds them), which must go
    whole, later. Leaving a row may break another batch in turn."""
    batches = list(formed)
    present = {row.id for row in rows}
    left: set[int] = set()
    while True:
        whole = [batch for batch in batches
                 if all(row_id in present and row_id not in left
                        for row_id, _ in batch.members)]
        broken = {row_id for batch in batches if batch not in whole
                  for row_id, _ in batch.members if row_id in present} - left
        if not broken:
            return whole, left
        left |= broken


def members(delivery: messages.Delivery) -> tuple[Member, ...]:
    """The notifications of a batch, as ``Formed`` names them."""
    return tuple((row.id, row.position) for row in delivery.rows)


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
