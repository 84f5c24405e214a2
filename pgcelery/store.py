"""The outbox store: the outbox as the bridge reads and changes it, apart from the driver.

``OutboxStore`` is what the bridge and redelivery ask of one database's outbox.
``DatabaseStore`` answers with pgcelery's SQL through a ``Connector`` (the driver adapter);
``MemoryStore`` answers from memory, for tests of the bridge's rules that need no database.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import copy
import dataclasses
import datetime
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from pgcelery import conf, dispatch, messages, sql
from pgcelery.connector import Connector
from pgcelery.dispatch import Failure, Formed
from pgcelery.keys import Keys, Waiting
from pgcelery.registry import Listener

#: A delivery of a ``redeliver_after`` listener, and its period in seconds.
Remembered = tuple[messages.Delivery, float]
#: A claimed notification of a listener with key options, to wait for its key.
Parked = tuple[Listener, messages.Row]
#: A listener (task name) and a key of its, as JSON text (None: the listener has no key).
ListenerKey = tuple[str, str | None]


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

    @abc.abstractmethod
    def waiting_counts(self) -> list[tuple[str, str, int]]:
        """(channel, listener, notifications) waiting for their keys; in a transaction of
        its own."""

    # -- listeners with key options (see ``keys``) --

    @abc.abstractmethod
    def park(self, parked: Sequence[Parked]) -> None:
        """Moves claimed notifications of keyed listeners to wait for their keys."""

    @abc.abstractmethod
    def take_release_turn(self) -> bool:
        """Whether this transaction takes the bridges' turn to release: False while another
        release holds it. Held until the transaction ends."""

    @abc.abstractmethod
    def waiting(self, first: dict[str, int], limits: dict[str, int | None],
                channels: Sequence[str],
                freed: Sequence[str] | None = None) -> dict[str, list[Waiting]]:
        """Per listener of ``first`` (task name: how many), the first notifications waiting
        for each of its keys, in commit order, each with its key's deliveries in flight; but
        none that a pending row of ``channels`` (claimed by another bridge, not yet parked)
        may come before, and none of a key whose deliveries in flight reach the listener's
        ``limits``. With ``freed`` (task ids of finished deliveries), only of their keys.
        Read once the release's turn is taken."""

    @abc.abstractmethod
    def blocked(self, listeners: Sequence[Listener]) -> set[ListenerKey]:
        """The keys of ``listeners`` held by a failed delivery, or by one retried and not
        yet published."""

    @abc.abstractmethod
    def fail_deliveries(self, failed: Sequence[tuple[messages.Delivery, str]]) -> None:
        """Keeps released deliveries that cannot be published as failed deliveries."""

    @abc.abstractmethod
    def unpark(self, ids: Sequence[int]) -> None:
        """Deletes waiting notifications released, or merged into another's delivery."""


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
        columns: list[list[Any]] = [[] for _ in range(11)]
        for delivery, seconds in deliveries:
            row, keys = delivery.row, delivery.listener.keys
            stored = messages.stored(delivery.rows, delivery.listener.batch is not None)
            for column, value in zip(columns, (delivery.task_id, delivery.listener.task_name,
                                               row.id, row.channel, row.trigger, *stored,
                                               seconds, *_location(keys)), strict=True):
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

    def waiting_counts(self) -> list[tuple[str, str, int]]:
        with self.connector.transaction():
            return self.connector.run(sql.WAITING_COUNTS)

    def park(self, parked: Sequence[Parked]) -> None:
        if not parked:
            return
        self.connector.run(sql.PARK, [list(column) for column in zip(*(
            (listener.task_name, *_location(listener.keys), row.id, row.position,
             str(row.uuid), row.payload, row.context) for listener, row in parked),
            strict=True)])

    def take_release_turn(self) -> bool:
        [(taken, _)] = self.connector.run(sql.TAKE_RELEASE_TURN)
        return bool(taken)

    def waiting(self, first: dict[str, int], limits: dict[str, int | None],
                channels: Sequence[str],
                freed: Sequence[str] | None = None) -> dict[str, list[Waiting]]:
        served = [list(first), list(first.values()), [limits[name] for name in first],
                  list(channels)]
        query, params = ((sql.WAITING_FIRST, served) if freed is None
                         else (sql.WAITING_FREED, [*served, list(freed)]))
        found: dict[str, list[Waiting]] = {}
        for (entry, listener, key, notification, position, seed, channel, trigger, payload,
             context, age, in_flight) in self.connector.run(query, params):
            found.setdefault(listener, []).append(Waiting(entry, key, messages.Row(
                notification, position, uuid.UUID(seed), channel, trigger, payload, context,
                age=age), in_flight))
        return found

    def blocked(self, listeners: Sequence[Listener]) -> set[ListenerKey]:
        if not listeners:
            return set()
        return {(listener, key) for listener, key in self.connector.run(sql.BLOCKED, [
            [listener.task_name for listener in listeners],
            *map(list, zip(*(_location(listener.keys) for listener in listeners),
                           strict=True))])}

    def fail_deliveries(self, failed: Sequence[tuple[messages.Delivery, str]]) -> None:
        if failed:
            self.connector.run(sql.FAIL_DELIVERIES, [list(column) for column in zip(*(
                (delivery.row.channel, delivery.row.trigger,
                 *messages.stored(delivery.rows, delivery.listener.batch is not None),
                 len(delivery.rows), reason, delivery.listener.task_name, delivery.task_id)
                for delivery, reason in failed), strict=True)])

    def unpark(self, ids: Sequence[int]) -> None:
        if ids:
            self.connector.defer(sql.UNPARK, [list(ids)])


def _location(keys: Keys | None) -> tuple[str | None, bool]:
    """Where a listener's key is in a stored payload (``sql.KEY``): none without a key."""
    return (None, False) if keys is None else (keys.name, keys.of_rows)



@dataclasses.dataclass
class _Kept:
    """A remembered delivery in ``MemoryStore``."""

    rows: list[messages.Row]
    listener: str
    period: float
    due_at: float
    key: str | None = None


@dataclasses.dataclass
class _Parked:
    """A notification waiting for its key in ``MemoryStore``."""

    id: int
    listener: str
    key: str | None
    row: messages.Row
    recorded_at: float


def _memory_key(listener: Listener, payload: str) -> str | None:
    """The key of a notification as ``MemoryStore`` compares it: its JSON, keys sorted."""
    keys = listener.keys
    if keys is None or keys.name is None:
        return None
    found = json.loads(payload)
    if keys.of_rows:
        found = found.get("new") if found.get("new") is not None else found.get("old") or {}
    return json.dumps(found.get(keys.name), sort_keys=True)


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
        #: Deliveries a worker finished (``finish``), out of ``remembered``.
        self.finished: dict[str, _Kept] = {}
        self.parked: list[_Parked] = []
        self._parked_ids = itertools.count(1)
        #: What the transaction in progress applies at its commit, as deferred statements.
        self._at_commit: list[Callable[[], object]] | None = None

    def add(self, *rows: messages.Row) -> None:
        """Records notifications, as a writer's commit does."""
        self.pending.extend(rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        saved = (copy.copy(self.pending), copy.copy(self.failed), copy.deepcopy(self.remembered),
                 copy.copy(self.parked))
        self._at_commit = []
        try:
            yield
            for change in self._at_commit:
                change()
        except BaseException:
            self.pending, self.failed, self.remembered, self.parked = saved
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
                delivery.rows, delivery.listener.task_name, seconds, time.monotonic() + seconds,
                _memory_key(delivery.listener, delivery.row.payload))

    def finish(self, task_id: str) -> None:
        """Marks a remembered delivery finished, as a worker does when its task ends."""
        self.finished[task_id] = self.remembered.pop(task_id)

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

    def waiting_counts(self) -> list[tuple[str, str, int]]:
        counts = collections.Counter((entry.row.channel, entry.listener) for entry in self.parked)
        return [(channel, listener, count) for (channel, listener), count in counts.items()]

    def park(self, parked: Sequence[Parked]) -> None:
        now = time.monotonic()
        for listener, row in parked:
            self.parked.append(_Parked(next(self._parked_ids), listener.task_name,
                                       _memory_key(listener, row.payload), row, now - row.age))

    def take_release_turn(self) -> bool:
        """One releaser: the turn is always free."""
        return True

    def waiting(self, first: dict[str, int], limits: dict[str, int | None],
                channels: Sequence[str],
                freed: Sequence[str] | None = None) -> dict[str, list[Waiting]]:
        looked = None if freed is None else {
            (kept.listener, kept.key) for task_id in freed
            if (kept := self.finished.get(task_id) or self.remembered.get(task_id))}
        horizon = min((row.id for row in self.pending
                       if row.channel in channels and row.listener is None), default=None)
        now = time.monotonic()
        busy = collections.Counter((kept.listener, kept.key) for kept in self.remembered.values())
        found: dict[str, list[Waiting]] = {}
        taken: collections.Counter[ListenerKey] = collections.Counter()
        for entry in sorted(self.parked, key=lambda entry: (entry.row.id, entry.row.position)):
            most, in_flight = limits.get(entry.listener), busy[entry.listener, entry.key]
            if (entry.listener not in first or horizon is not None and entry.row.id >= horizon
                    or most is not None and in_flight >= most
                    or looked is not None and (entry.listener, entry.key) not in looked):
                continue
            taken[entry.listener, entry.key] += 1
            if taken[entry.listener, entry.key] <= first[entry.listener]:
                found.setdefault(entry.listener, []).append(Waiting(
                    entry.id, entry.key, entry.row._replace(age=now - entry.recorded_at),
                    in_flight))
        return found

    def blocked(self, listeners: Sequence[Listener]) -> set[ListenerKey]:
        named = {listener.task_name: listener for listener in listeners}
        held = [row for row in self.pending if row.listener in named]
        held += [row for row, _ in self.failed if row.listener in named]
        return {(row.listener, _memory_key(named[row.listener], row.payload))
                for row in held if row.listener is not None}

    def fail_deliveries(self, failed: Sequence[tuple[messages.Delivery, str]]) -> None:
        self.failed.extend((delivery.row._replace(listener=delivery.listener.task_name,
                                                  task_id=delivery.task_id), reason)
                           for delivery, reason in failed)

    def unpark(self, ids: Sequence[int]) -> None:
        done = set(ids)
        self._defer(lambda: setattr(self, "parked", [
            entry for entry in self.parked if entry.id not in done]))
