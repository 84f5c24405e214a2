"""Redelivery: the deliveries of ``redeliver_after`` listeners whose tasks have not finished
in time (a broker that lost its queue, a worker lost mid-task) published again, under the
same task id.

The bridge remembers such a delivery in the claim that publishes it (``OutboxStore.remember``);
the worker marks it finished. This publishes again those still unfinished when due, a round
at a time, on each outbox's turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pgcelery import dispatch, messages, registry

if TYPE_CHECKING:
    from pgcelery.bridge import Outbox

logger = logging.getLogger("pgcelery.bridge")

#: Publishes a delivery through an outbox's broker connection; returns why it could not be.
Send = Callable[[messages.Delivery, "Outbox"], "str | None"]


class Redelivery:
    """The redelivery rounds of one bridge, for the listeners of ``channels`` (all: None)."""

    def __init__(self, channels: Sequence[str] | None, round_size: int, sweep_interval: float,
                 send: Send, stopping: Callable[[], bool]) -> None:
        self.channels = list(channels) if channels else None
        self.round_size, self.sweep_interval = round_size, sweep_interval
        self._send, self._stopping = send, stopping

    def if_due(self, outbox: Outbox) -> None:
        """Publishes again the outbox's deliveries whose tasks have not finished in time."""
        if time.monotonic() < outbox.redeliver_at:
            return
        while not self._stopping() and self._round(outbox) == self.round_size:
            pass
        # Looked at again by the next sweep at the latest: another bridge may remember
        # deliveries, and stop.
        seconds = outbox.store.next_redelivery(self.channels)
        wait = self.sweep_interval if seconds is None else min(max(seconds, 0.0),
                                                               self.sweep_interval)
        outbox.redeliver_at = time.monotonic() + wait

    def _round(self, outbox: Outbox) -> int:
        """Publishes one round of due deliveries again; returns how many were due."""
        store = outbox.store
        with store.transaction():
            due = store.due_deliveries(self.round_size, self.channels)
            if not due:
                return 0
            with outbox.publisher.grouped():
                for rows in due:
                    self._send_again(rows, outbox)
            store.redelivered([rows[0].task_id for rows in due if rows[0].task_id])
        return len(due)

    def _send_again(self, rows: list[messages.Row], outbox: Outbox) -> None:
        """Publishes a delivery again under its task id; one that cannot be waits a period."""
        row = rows[0]
        task_name, task_id = row.listener or "", row.task_id or ""
        listener = registry.find(row.channel, row.trigger, task_name)
        extra = dispatch.log_fields(row, task_id, task_name)
        if listener is None:
            logger.warning("Delivery %s[%s] of notification %d is due again, but %s is not "
                           "registered in this bridge: left for a bridge that knows it.",
                           task_name, task_id, row.id, task_name, extra=extra)
            return
        reason = self._send(messages.Delivery(listener, task_id, rows), outbox)
        if reason is None:
            logger.warning("Task %s[%s] (notification %d on %s) has not finished in time: "
                           "published again.", task_name, task_id, row.id, row.channel,
                           extra=extra)
        else:
            logger.error("Delivery %s[%s] of notification %d could not be published again: "
                         "%s", task_name, task_id, row.id, reason, extra=extra)
