"""Keys: listeners whose notifications wait in PostgreSQL until their key (or a slot of
theirs) is free — ``ordered``, ``debounce`` and ``concurrency``, grouped by ``key``.

Celery runs whatever the broker hands it, in parallel. So the claim does not publish the
notifications of such a listener: it moves them to ``pgcelery_waiting``, in its transaction,
and the bridge releases them (``release``) as the listener's deliveries in flight — the
remembered ones not yet finished, which the worker marks — allow. The key is read by the
database from the stored payload (``sql.KEY``), never computed by the writer's trigger.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pgcelery import channels, conf, dispatch, messages
from pgcelery.registry import Listener

if TYPE_CHECKING:
    from pgcelery.bridge import Outbox

logger = logging.getLogger("pgcelery.bridge")

#: Publishes a delivery through an outbox's broker connection; returns why it could not be.
Send = Callable[[messages.Delivery, "Outbox"], "str | None"]

#: The wake-up a worker sends when a delivery of a keyed listener finished begins with this,
#: then a space and the delivery's task id: the bridges release its key, with no claim.
FREED = "key freed"


def freed(task_id: str) -> str:
    """The payload of the wake-up that says delivery ``task_id`` finished."""
    return f"{FREED} {task_id}"


def freed_task(payload: str) -> str | None:
    """The task id a wake-up's ``payload`` says finished: "" where it names none (every key
    may be free), None if it is no such wake-up."""
    if payload == FREED:
        return ""
    return payload.removeprefix(f"{FREED} ") if payload.startswith(f"{FREED} ") else None


#: Seconds at least from a release that published several deliveries to the next that
#: workers' wake-ups ask: under load, one release serves every key freed meanwhile (a
#: transaction of four round trips, not one per finished task), and a key's next
#: notification waits that much longer at most. After a release of one delivery, or of
#: none, the next goes at once: a lone busy key does not wait.
RELEASE_GAP = 0.010
#: The longest a bridge waits before it tries again to take the turn to release.
MOST_RELEASE_GAP = 1.0
#: The listener options this module reads.
OPTIONS = ("key", "ordered", "debounce", "debounce_max", "concurrency")
#: ``debounce_max`` where the listener sets none, in debounce periods.
DEBOUNCE_MAX_PERIODS = 10


@dataclasses.dataclass(frozen=True)
class Keys:
    """What a listener's key options ask for."""

    #: The key as the listener names it (a channel field, a model field or "pk"); None:
    #: ``concurrency`` counts the listener's deliveries, whatever their notifications.
    field: str | None
    #: Where the key is in the stored payload: the channel field's name, or for a trigger
    #: channel the model field's column in ``new`` (``old`` where ``new`` is null).
    name: str | None
    of_rows: bool
    #: False, True, or "block": the key is held by a failed delivery until it is retried
    #: or discarded.
    ordered: bool | str = False
    debounce: float | None = None
    debounce_max: float | None = None
    concurrency: int | None = None

    @property
    def limit(self) -> int | None:
        """Deliveries of one key (of the listener, without one) in flight at once; None:
        no limit."""
        return 1 if self.ordered else self.concurrency

    @property
    def blocking(self) -> bool:
        return self.ordered == "block"


def of(channel: type, options: dict[str, Any]) -> Keys | None:
    """The key options taken out of ``options``, checked against ``channel``; None if the
    listener has none.

    Raises:
        TypeError: an option needs another, or names no field of the channel.
        ImproperlyConfigured: a value is out of range.
    """
    given = {option: options.pop(option) for option in OPTIONS if option in options}
    if not given:
        return None
    name = channels.channel_name(channel)
    field = given.get("key")
    ordered = given.get("ordered", False)
    if ordered not in (False, True, "block"):
        raise TypeError(f"Listener of {name}: ordered= takes True, False or 'block', not "
                        f"{ordered!r}.")
    debounce = _seconds("debounce", given.get("debounce"))
    debounce_max = _seconds("debounce_max", given.get("debounce_max"))
    concurrency = given.get("concurrency")
    if concurrency is not None:
        concurrency = conf.positive_int("concurrency", concurrency)
    if field is None and (ordered or debounce is not None):
        raise TypeError(f"Listener of {name}: ordered= and debounce= apply to the notifications "
                        "of one key; name the channel field that groups them with key=.")
    if debounce_max is not None and debounce is None:
        raise TypeError(f"Listener of {name}: debounce_max= bounds debounce=; give debounce=.")
    if field is not None and not (ordered or debounce is not None or concurrency is not None):
        raise TypeError(f"Listener of {name}: key={field!r} groups notifications for "
                        "ordered=, debounce= or concurrency=; give one of them.")
    if debounce is not None and debounce_max is not None and debounce_max < debounce:
        raise TypeError(f"Listener of {name}: debounce_max={debounce_max:g} is shorter than "
                        f"debounce={debounce:g}; make it at least as long.")
    if ordered and concurrency not in (None, 1):
        raise TypeError(f"Listener of {name}: ordered= runs one notification of a key at a "
                        f"time; concurrency={concurrency} cannot apply. Leave one out.")
    if debounce is not None and debounce_max is None:
        debounce_max = DEBOUNCE_MAX_PERIODS * debounce
    location, of_rows = (None, False) if field is None else _location(channel, field)
    return Keys(field, location, of_rows, ordered, debounce, debounce_max, concurrency)


def _seconds(option: str, value: Any) -> float | None:
    return None if value is None else conf.positive_seconds(option, value)


def _location(channel: type, field: str) -> tuple[str, bool]:
    """Where ``field`` is in the stored payload of ``channel``, and whether it is in a row."""
    name = channels.channel_name(channel)
    if not isinstance(field, str):
        raise TypeError(f"Listener of {name}: key= takes a field name, not {field!r}.")
    if not issubclass(channel, channels.TriggerChannel):
        fields = [each.name for each in dataclasses.fields(typing.cast(Any, channel))]
        if field not in fields:
            raise TypeError(f"Listener of {name}: key={field!r} is not a field of the channel "
                            f"({', '.join(fields)}).")
        return field, False
    opts = channel.model._meta
    model_field = opts.pk if field == "pk" else next(
        (each for each in opts.concrete_fields if each.name == field), None)
    if model_field is None:
        raise TypeError(f"Listener of {name}: key={field!r} is not a field of {opts.label}; "
                        "name one of its fields, or 'pk'.")
    if model_field in channels.hidden_fields(channel):
        raise TypeError(f"Listener of {name}: key={field!r} is left out of the payload by the "
                        "channel's include_fields/exclude_fields; keep it in.")
    return typing.cast(str, model_field.column), True


class Waiting(typing.NamedTuple):
    """A notification waiting for its key: its entry's id, its key as JSON text, the
    notification as a claim returns it (its ``age`` from when it was recorded), and how many
    deliveries of its key were in flight when it was read."""

    id: int
    key: str | None
    row: messages.Row
    in_flight: int = 0


class Released(typing.NamedTuple):
    """What one release publishes, what it drops, and when to look again."""

    #: To publish, each remembered with its key.
    deliveries: list[messages.Delivery]
    #: Waiting entries done with: those published, and those a debounce merged away.
    done: list[int]
    #: Seconds until the first debounce not yet due is, if any.
    next_due: float | None


def release(listener: Listener, waiting: Sequence[Waiting],
            blocked: Iterable[str | None] = ()) -> Released:
    """The deliveries of ``listener`` that may go now: per key, in commit order, while the
    deliveries of the key in flight leave room, and none of a ``blocked`` key.

    ``waiting`` holds the first notifications of each key, in commit order.
    """
    keys = typing.cast(Keys, listener.keys)
    held = set(blocked)
    found: list[messages.Delivery] = []
    done: list[int] = []
    next_due: float | None = None
    for key, entries in _by_key(waiting).items():
        if key in held:
            continue
        room = len(entries) if keys.limit is None else keys.limit - entries[0].in_flight
        while room > 0 and entries:
            if keys.debounce is None:
                taken, sent = entries[:listener.batch or 1], None
            else:
                taken, wait = _merged(entries, keys, listener.batch)
                if wait > 0:
                    next_due = wait if next_due is None else min(next_due, wait)
                    break
                sent = None if listener.batch else taken[-1:]
            rows = [entry.row for entry in (sent or taken)]
            found.append(messages.Delivery.of(listener, rows))
            done.extend(entry.id for entry in taken)
            entries = entries[len(taken):]
            room -= 1
    return Released(found, done, next_due)


def _by_key(waiting: Sequence[Waiting]) -> dict[str | None, list[Waiting]]:
    grouped: dict[str | None, list[Waiting]] = {}
    for entry in waiting:
        grouped.setdefault(entry.key, []).append(entry)
    return grouped


def _merged(entries: list[Waiting], keys: Keys, batch: int | None) -> tuple[list[Waiting], float]:
    """The notifications of a key that one debounced delivery merges: each recorded within
    ``debounce`` of the one before, the first ``debounce_max`` at most before the last
    (and up to ``batch`` of them); and seconds until it is due (0 or less: now)."""
    debounce, most = typing.cast(float, keys.debounce), typing.cast(float, keys.debounce_max)
    first = entries[0].row.age
    taken = [entries[0]]
    for entry in entries[1:]:
        if (len(taken) == batch or taken[-1].row.age - entry.row.age > debounce
                or first - entry.row.age > most):
            return taken, 0.0  # closed by a later notification: due
        taken.append(entry)
    return taken, min(debounce - taken[-1].row.age, most - first)


class Release:
    """The release step of one bridge: on each turn of an outbox, publishes the waiting
    notifications of ``listeners`` (those with key options it serves) that their keys allow,
    remembering each delivery with its key in the same transaction."""

    def __init__(self, listeners: Sequence[Listener], most: int, send: Send) -> None:
        self.listeners = {listener.task_name: listener for listener in listeners}
        #: How many notifications of each key a release looks at: those it may publish at
        #: once, and for a debounce up to ``most`` (a claim's size) to merge.
        self.first = {listener.task_name: _looked_at(listener, most) for listener in listeners}
        self.limits = {listener.task_name: typing.cast(Keys, listener.keys).limit
                       for listener in listeners}
        self.channels = sorted({listener.channel for listener in listeners})
        self.blocking = [listener for listener in listeners
                         if typing.cast(Keys, listener.keys).blocking]
        self._send = send

    def turn(self, outbox: Outbox, full: bool) -> list[messages.Delivery]:
        """Publishes what may go now, of every key if ``full``, else of the keys of the
        deliveries the outbox heard finished; returns the deliveries sent. The outbox is due
        again when the first debounce not yet due is."""
        store = outbox.store
        freed = None if full else sorted(outbox.freed)
        with store.transaction():
            if not store.take_release_turn():
                _after_another(outbox, full)
                return []
            waiting = store.waiting(self.first, self.limits, self.channels, freed)
            if not waiting:
                _due_again(outbox, freed, [], 0)
                return []
            blocked = store.blocked([self.listeners[name] for name in waiting
                                     if self.listeners[name] in self.blocking])
            released = [release(self.listeners[name], entries,
                                {key for owner, key in blocked if owner == name})
                        for name, entries in waiting.items()]
            deliveries = [delivery for found in released for delivery in found.deliveries]
            remembered = [(delivery, typing.cast(float, delivery.listener.redelivery_period()))
                          for delivery in deliveries]
            store.remember(remembered)
            failed: list[tuple[messages.Delivery, str]] = []
            with outbox.publisher.grouped():
                for delivery in deliveries:
                    reason = self._send(delivery, outbox)
                    if reason is not None:
                        logger.error("Delivery %s[%s] of notification %d failed: %s",
                                     delivery.listener.task_name, delivery.task_id,
                                     delivery.row.id, reason,
                                     extra=dispatch.log_fields(delivery.row, delivery.task_id,
                                                               delivery.listener.task_name))
                        failed.append((delivery, reason))
            store.forget([delivery.task_id for delivery, _ in failed])
            store.fail_deliveries(failed)
            store.unpark([entry for found in released for entry in found.done])
        outbox.remembered(remembered)
        _due_again(outbox, freed, [found.next_due for found in released
                                   if found.next_due is not None], len(deliveries))
        return [delivery for delivery in deliveries
                if all(delivery is not refused for refused, _ in failed)]


def _after_another(outbox: Outbox, full: bool) -> None:
    """Another bridge releases now, or hung while it did: this one tries again with the
    same keys after the gap, twice as long each time it finds the turn taken, up to
    ``MOST_RELEASE_GAP``."""
    outbox.release_gap = min(max(2 * outbox.release_gap, RELEASE_GAP), MOST_RELEASE_GAP)
    if full:
        outbox.release_at = min(outbox.release_at, time.monotonic() + outbox.release_gap)


def _due_again(outbox: Outbox, freed: Sequence[str] | None, due: list[float],
               published: int) -> None:
    """After a release of every key (``freed`` None) or of the keys of ``freed`` that
    ``published`` deliveries: releases again when the first of ``due`` (seconds) is, or
    sooner where a release of other keys asked it; the gap is kept after a release of
    several. An error before leaves the keys to release again."""
    outbox.release_gap = RELEASE_GAP if published > 1 else 0.0
    at = time.monotonic() + min(due) if due else math.inf
    if freed is None:
        outbox.release_at = at
        outbox.freed.clear()
    else:
        outbox.release_at = min(outbox.release_at, at)
        outbox.freed.difference_update(freed)


def _looked_at(listener: Listener, most: int) -> int:
    keys = typing.cast(Keys, listener.keys)
    if keys.debounce is not None:
        return most
    return (listener.batch or 1) * typing.cast(int, keys.limit)
