"""The outbox store: the outbox as the bridge reads and changes it, apart from the driver.

``OutboxStore`` is what the bridge and redelivery ask of one database's outbox.
``DatabaseStore`` answers with pgcelery's SQL through a ``Connector`` (the driver adapter);
``MemoryStore`` answers from memory, for tests of the bridge's rules that need no database.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import datetime
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from pgcelery import conf, dispatch, messages, sql
from pgcelery.connector import Connector
from pgcelery.dispatch import Failure, Formed
from pgcelery.registry import Listener

#: A delivery of a ``redeliver_after`` listener, and its period in seconds.
Remembered = tuple[messages.Delivery, float]


@dataclasses.dataclass(frozen=True)
class Scope:
    """Which pending rows a bridge claims."""

    #: The channels it serves (``--channels``); None: every channel.
    channels: list[str] | None
    #: 'channel|trigger' of every listener it knows.
    known: list[str]
    #: How long rows of a channel or trigger it does not know wait for a bridge that knows
    #: them (a newer release, during a rolling deploy) before it fails them.
    grace: datetime.timedelta

    @classmethod
    def of(cls, listeners: Iterable[Listener], channels: Sequence[str] | None,
           grace: datetime.timedelta) -> Scope:
        known = sorted({f"{listener.channel}|{listener.trigger}" for listener in listeners})
        return cls(list(channels) if channels else None, known, grace)

    def claim_parameters(self, limit: int, budget: int) -> dict[str, Any]:
        """The parameters of ``sql.claim`` for up to ``limit`` notifications and ``budget``
        decoded bytes in this scope."""
        return {"limit": limit, "channels": self.channels, "known": self.known,
                "grace": self.grace, "budget": budget}


def fail_parameters(failures: Sequence[Failure]) -> list[list[Any]]:
    """The parameters of ``sql.FAIL``: the failures' ids, positions and reasons."""
    return [list(column) for column in zip(*failures, strict=True)]


def delete_parameters(ids: Iterable[int]) -> list[list[int]]:
    """The parameters of ``sql.DELETE``."""
    return [sorted(set(ids))]


class OutboxStore(abc.ABC):
    """One database's outbox, read and changed inside ``transaction``.

    Attributes:
        errors: The exceptions meaning the outbox cannot be reached; the bridge retries
            with backoff on them.
    """

    errors: tuple[type[Exception], ...]

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Commits what ran inside, or undoes it on any exception."""

    @abc.abstractmethod
    def claim(self, limit: int, budget: int, scope: Scope) -> tuple[list[messages.Row], bool]:
        """Locks pending rows in ``scope`` holding up to ``limit`` notifications and
        ``budget`` bytes of payload and context as decoded text (one row, whatever its
        size). Returns their notifications, and whether pending rows were left for the
        limits."""

    @abc.abstractmethod
    def claim_rows(self, ids: Iterable[int]) -> list[messages.Row]:
        """Locks the pending rows ``ids`` that no other claim holds, and returns their
        notifications as ``claim`` does."""

    @abc.abstractmethod
    def formed_batches(self, row_ids: Iterable[int], listeners: Iterable[str]) -> list[Formed]:
        """The batches of ``listeners`` (task names) earlier claims formed of notifications
        of the rows ``row_ids``."""

    @abc.abstractmethod
    def form(self, batches: Sequence[messages.Delivery]) -> None:
        """Keeps the batches about to be published, committed before their messages leave,
        whatever becomes of the transaction (it dies with its bridge)."""

    @abc.abstractmethod
    def unform(self, task_ids: Sequence[str]) -> None:
        """Forgets the claim's batches, with its rows."""

    @abc.abstractmethod
    def fail(self, failures: Sequence[Failure]) -> None:
        """Keeps the claimed notifications that cannot be dispatched as failed rows."""

    @abc.abstractmethod
    def delete(self, ids: Iterable[int]) -> None:
        """Deletes the claimed rows, but those ``fail`` has just marked."""

    @abc.abstractmethod
    def prune(self, retention: datetime.timedelta) -> None:
        """Forgets the ``atomic=True`` task ids and the formed batches older than
        ``retention``, and the deliveries that finished before
        ``conf.FINISHED_DELIVERY_RETENTION``; in a transaction of its own."""

    @abc.abstractmethod
    def remember(self, deliveries: Sequence[Remembered]) -> None:
        """Remembers deliveries about to be published, until their tasks finish."""

    @abc.abstractmethod
    def forget(self, task_ids: Sequence[str]) -> None:
        """Forgets remembered deliveries whose messages were not sent after all."""

    @abc.abstractmethod
    def due_deliveries(self, limit: int,
                       channels: Sequence[str] | None) -> list[list[messages.Row]]:
        """Locks up to ``limit`` unfinished deliveries (of ``channels``) due to be published
        again, each as the rows it goes out with: their listener and task id set."""

    @abc.abstractmethod
    def redelivered(self, task_ids: Sequence[str]) -> None:
        """Counts a new publish of these deliveries; each is due again a period from now."""

    @abc.abstractmethod
    def next_redelivery(self, channels: Sequence[str] | None) -> float | None:
        """Seconds until the next unfinished delivery (of ``channels``) is due, if any; in a
        transaction of its own."""

    @abc.abstractmethod
    def backlog(self) -> list[tuple[Any, ...]]:
        """(channel, pending notifications, oldest one's age in seconds or None, failed rows)
        of every channel with rows in the outbox, whichever bridge serves it; in a
        transaction of its own."""


class DatabaseStore(OutboxStore):
    """The outbox in its database, through pgcelery's SQL on ``connector``."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.errors = connector.errors

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return self.connector.transaction()

    def claim(self, limit: int, budget: int, scope: Scope) -> tuple[list[messages.Row], bool]:
        found = self.connector.run(self.connector.claim_statement,
                                   scope.claim_parameters(limit, budget))
        return messages.claimed(found), bool(found and found[0][-1])

    def claim_rows(self, ids: Iterable[int]) -> list[messages.Row]:
        return messages.claimed(self.connector.run(sql.CLAIM_ROWS, {"ids": sorted(ids)}))

    def formed_batches(self, row_ids: Iterable[int], listeners: Iterable[str]) -> list[Formed]:
        found = self.connector.run(sql.FORMED_BATCHES, [sorted(listeners), sorted(row_ids)])
        return [Formed(task_id, listener, tuple(zip(ids, positions, strict=True)))
                for task_id, listener, ids, positions in found]

    def form(self, batches: Sequence[messages.Delivery]) -> None:
        if not batches:
            return
        value = json.dumps([[batch.task_id, batch.listener.task_name, *map(list, zip(
            *dispatch.members(batch), strict=True))] for batch in batches])
        self.connector.run_apart(sql.FORM_BATCHES, [value])

    def unform(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            self.connector.defer(sql.FORGET_BATCHES, [list(task_ids)])

    def fail(self, failures: Sequence[Failure]) -> None:
        if failures:
            self.connector.defer(sql.FAIL, fail_parameters(failures))

    def delete(self, ids: Iterable[int]) -> None:
        self.connector.defer(sql.DELETE, delete_parameters(ids))

    def prune(self, retention: datetime.timedelta) -> None:
        with self.connector.transaction():
            self.connector.defer(sql.PRUNE_TASK_RECORDS, [retention])
            self.connector.defer(sql.PRUNE_BATCHES, [retention])
            self.connector.defer(sql.PRUNE_DELIVERIES, [conf.FINISHED_DELIVERY_RETENTION])

    def remember(self, deliveries: Sequence[Remembered]) -> None:
        if not deliveries:
            return
        columns: list[list[Any]] = [[] for _ in range(9)]
        for delivery, seconds in deliveries:
            row = delivery.row
            stored = messages.stored(delivery.rows, delivery.listener.batch is not None)
            for column, value in zip(columns, (delivery.task_id, delivery.listener.task_name,
                                               row.id, row.channel, row.trigger, *stored,
                                               seconds), strict=True):
                column.append(value)
        self.connector.run(sql.REMEMBER_DELIVERIES, columns)

    def forget(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            self.connector.defer(sql.FORGET_DELIVERIES, [list(task_ids)])

    def due_deliveries(self, limit: int,
                       channels: Sequence[str] | None) -> list[list[messages.Row]]:
        names = list(channels) if channels else None
        due: dict[str, list[messages.Row]] = {}
        for (task_id, listener, notification, channel, trigger, payload, context, position,
             seed) in self.connector.run(sql.DUE_DELIVERIES, [names, names, limit]):
            due.setdefault(task_id, []).append(messages.Row(
                notification, position, uuid.UUID(seed) if seed else messages.NO_SEED, channel,
                trigger, payload, context, listener, task_id))
        return list(due.values())

    def redelivered(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            self.connector.defer(sql.REDELIVERED, [list(task_ids)])

    def next_redelivery(self, channels: Sequence[str] | None) -> float | None:
        names = list(channels) if channels else None
        with self.connector.transaction():
            [(seconds,)] = self.connector.run(sql.NEXT_REDELIVERY, [names, names])
        return None if seconds is None else float(seconds)

    def backlog(self) -> list[tuple[Any, ...]]:
        with self.connector.transaction():
            return self.connector.run(sql.BACKLOG)



@dataclasses.dataclass
class _Kept:
    """A remembered delivery in ``MemoryStore``."""

    rows: list[messages.Row]
    listener: str
    period: float
    due_at: float


class MemoryStore(OutboxStore):
    """The outbox in memory, for tests of the bridge's rules that need no database.

    Notifications are added as the rows a claim returns (``add``) and claimed in their order
    by the same limits and scope; a transaction undone on an exception takes back what ran
    inside it, but the batches ``form`` kept, as the database keeps them apart. One claimer
    at a time: there is no other claim to skip.
    """

    errors: tuple[type[Exception], ...] = (ConnectionError,)

    def __init__(self) -> None:
        self.pending: list[messages.Row] = []
        self.failed: list[tuple[messages.Row, str]] = []
        self.formed: dict[str, Formed] = {}
        self.remembered: dict[str, _Kept] = {}
        #: What the transaction in progress applies at its commit, as deferred statements.
        self._at_commit: list[Callable[[], object]] | None = None

    def add(self, *rows: messages.Row) -> None:
        """Records notifications, as a writer's commit does."""
        self.pending.extend(rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        saved = copy.copy(self.pending), copy.copy(self.failed), copy.deepcopy(self.remembered)
        self._at_commit = []
        try:
            yield
            for change in self._at_commit:
                change()
        except BaseException:
            self.pending, self.failed, self.remembered = saved
            raise
        finally:
            self._at_commit = None

    def _defer(self, change: Callable[[], object]) -> None:
        if self._at_commit is None:
            raise RuntimeError("A deferred change runs in a transaction only.")
        self._at_commit.append(change)

    def claim(self, limit: int, budget: int, scope: Scope) -> tuple[list[messages.Row], bool]:
        in_scope = [row for row in self.pending if self._in_scope(row, scope)]
        kept: list[messages.Row] = []
        ids: list[int] = []
        size = 0
        for row_id in dict.fromkeys(row.id for row in in_scope):
            rows = [row for row in in_scope if row.id == row_id]
            size += sum(len(row.payload) + len(row.context or "") for row in rows)
            if ids and (len(kept) >= limit or size > budget):
                break
            ids.append(row_id)
            kept.extend(rows)
        return kept, len(ids) < len({row.id for row in in_scope})

    @staticmethod
    def _in_scope(row: messages.Row, scope: Scope) -> bool:
        return ((scope.channels is None or row.channel in scope.channels)
                and (f"{row.channel}|{row.trigger}" in scope.known
                     or row.age > scope.grace.total_seconds()))

    def claim_rows(self, ids: Iterable[int]) -> list[messages.Row]:
        wanted = set(ids)
        return [row for row in self.pending if row.id in wanted]

    def formed_batches(self, row_ids: Iterable[int], listeners: Iterable[str]) -> list[Formed]:
        rows, names = set(row_ids), set(listeners)
        return [batch for batch in self.formed.values() if batch.listener in names
                and any(row_id in rows for row_id, _ in batch.members)]

    def form(self, batches: Sequence[messages.Delivery]) -> None:
        for batch in batches:
            self.formed.setdefault(batch.task_id, Formed(
                batch.task_id, batch.listener.task_name, dispatch.members(batch)))

    def unform(self, task_ids: Sequence[str]) -> None:
        self._defer(lambda: [self.formed.pop(task_id, None) for task_id in task_ids])

    def fail(self, failures: Sequence[Failure]) -> None:
        def mark() -> None:
            reasons = {(row_id, position): reason for row_id, position, reason in failures}
            self.failed.extend((row, reasons[row.id, row.position]) for row in self.pending
                               if (row.id, row.position) in reasons)
            self.pending = [row for row in self.pending
                            if (row.id, row.position) not in reasons]
        self._defer(mark)

    def delete(self, ids: Iterable[int]) -> None:
        deleted = set(ids)
        self._defer(lambda: setattr(self, "pending", [
            row for row in self.pending if row.id not in deleted]))

    def prune(self, retention: datetime.timedelta) -> None:
        """Nothing is kept past its use in memory."""

    def remember(self, deliveries: Sequence[Remembered]) -> None:
        for delivery, seconds in deliveries:
            self.remembered[delivery.task_id] = _Kept(
                delivery.rows, delivery.listener.task_name, seconds, time.monotonic() + seconds)

    def forget(self, task_ids: Sequence[str]) -> None:
        self._defer(lambda: [self.remembered.pop(task_id, None) for task_id in task_ids])

    def due_deliveries(self, limit: int,
                       channels: Sequence[str] | None) -> list[list[messages.Row]]:
        now = time.monotonic()
        due = sorted(((task_id, kept) for task_id, kept in self.remembered.items()
                      if kept.due_at <= now
                      and (not channels or kept.rows[0].channel in channels)),
                     key=lambda item: item[1].due_at)[:limit]
        return [[row._replace(listener=kept.listener, task_id=task_id) for row in kept.rows]
                for task_id, kept in due]

    def redelivered(self, task_ids: Sequence[str]) -> None:
        def again() -> None:
            for task_id in task_ids:
                kept = self.remembered[task_id]
                kept.due_at = time.monotonic() + kept.period
        self._defer(again)

    def next_redelivery(self, channels: Sequence[str] | None) -> float | None:
        due = [kept.due_at for kept in self.remembered.values()
               if not channels or kept.rows[0].channel in channels]
        return min(due) - time.monotonic() if due else None

    def backlog(self) -> list[tuple[Any, ...]]:
        channels = sorted({row.channel for row in self.pending}
                          | {row.channel for row, _ in self.failed})
        return [(channel, sum(row.channel == channel for row in self.pending), None,
                 sum(row.channel == channel for row, _ in self.failed))
                for channel in channels]
