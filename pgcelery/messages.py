"""The task message: what the bridge sends for one listener and one notification, or a
batch of them.

The message carries the stored JSON untouched, in one keyword argument; the worker
decodes it into the declared types just before the listener runs, so Decimal or large
rows cross the broker exactly as stored. The bridge only checks that it will decode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import typing
import uuid
from collections.abc import Sequence
from typing import Any

from pgcelery import channels, payloads, tracing
from pgcelery.registry import Listener

#: The keyword argument that carries the notification to the listener's task.
ENVELOPE = "_pgcelery"


class Row(typing.NamedTuple):
    """One notification as the bridge claims it: an outbox row, or one of a row's chunk."""

    id: int
    position: int
    uuid: uuid.UUID
    channel: str
    trigger: str
    payload: str
    context: str | None
    #: Set for a failed delivery put back in the queue: it goes to that listener only,
    #: under the task id it had.
    listener: str | None = None
    task_id: str | None = None
    #: Seconds from the writer's transaction to the claim, by the database's clock.
    age: float = 0.0


@dataclasses.dataclass
class Delivery:
    """One task message: ``listener``'s run of one notification or, for a listener with
    ``batch``, of a batch of them in commit order."""

    listener: Listener
    task_id: str
    rows: list[Row]

    @classmethod
    def of(cls, listener: Listener, rows: list[Row]) -> Delivery:
        """The delivery of ``rows`` to ``listener``, under the task id they derive (or the
        one a failed delivery put back in the queue kept)."""
        kept = rows[0].task_id
        if kept is not None:
            return cls(listener, kept, rows)
        if listener.batch is None:
            return cls(listener, task_id(rows[0], listener.task_name, listener.trigger), rows)
        return cls(listener, _batch_task_id(rows, listener), rows)

    @property
    def row(self) -> Row:
        """The first notification: the only one, unless the delivery is a batch."""
        return self.rows[0]

    def envelope(self, database: str, redeliver_after: float | None = None) -> dict[str, Any]:
        """What the listener's task receives; ``redeliver_after`` tells it to mark its
        delivery finished, and is left out for listeners without it. The first publish of
        a delivery (not a redelivery, not a failed one retried) carries its time: no copy of
        it can be out before ``redeliver_after`` has passed."""
        row = self.row
        opened: dict[str, Any] = {"channel": row.channel, "trigger": row.trigger}
        if self.listener.batch is None:
            opened.update(id=row.id, payload=row.payload, context=row.context)
        else:
            opened["batch"] = [[item.id, str(item.uuid), item.position, item.payload,
                                item.context] for item in self.rows]
        opened["database"] = database
        if redeliver_after is not None:
            opened["redeliver_after"] = redeliver_after
            if row.task_id is None:
                opened["published_at"] = time.time()
        return opened


#: The payload of a claimed outbox row that holds no notification pgcelery can read.
UNREADABLE = ""


def claimed(found: Sequence[tuple[Any, ...]]) -> list[Row]:
    """The notifications of a claim's result rows (``sql.claim``). The notifications of a
    chunk share one context string: a large context is held once, not once per row."""
    rows: list[Row] = []
    for (row_id, position, seed, channel, trigger, payload, context, listener, task_id, age,
         shared, _) in found:
        rows.append(Row(row_id, position, uuid.UUID(seed), channel, trigger,
                        UNREADABLE if payload is None else payload,
                        rows[-1].context if shared else context, listener, task_id, age))
    return rows


def task_id(row: Row, task_name: str, trigger: str) -> str:
    """The Celery task id of one listener's run of one notification: a redelivery repeats it,
    and a failed delivery keeps the one it had.

    ``uuid5(row.uuid, "task|trigger|position")``, written out: ``uuid.uuid5`` took a tenth
    of the bridge's time per message.
    """
    if row.task_id is not None:
        return row.task_id
    return _uuid5(row.uuid.bytes + f"{task_name}|{trigger}|{row.position}".encode())


def _batch_task_id(rows: Sequence[Row], listener: Listener) -> str:
    """A batch's task id, from every notification in it: a claim that finds the same
    notifications again (a bridge killed before its commit) repeats it."""
    seed = b"".join(row.uuid.bytes + row.position.to_bytes(8, "big") for row in rows)
    return _uuid5(rows[0].uuid.bytes + f"{listener.task_name}|{listener.trigger}|".encode()
                  + hashlib.sha1(seed).digest())


def _uuid5(data: bytes) -> str:
    digest = bytearray(hashlib.sha1(data).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    hexa = digest.hex()
    return f"{hexa[:8]}-{hexa[8:12]}-{hexa[12:16]}-{hexa[16:20]}-{hexa[20:]}"


#: The seed of a notification whose task id is kept (a redelivery, an opened envelope):
#: the seed of new task ids is not used.
NO_SEED = uuid.UUID(int=0)


def batch_rows(envelope: dict[str, Any]) -> list[Row]:
    """The notifications of a batch's envelope, as the bridge claimed them."""
    return [Row(row_id, position, uuid.UUID(seed), envelope["channel"], envelope["trigger"],
                payload, context)
            for row_id, seed, position, payload, context in envelope["batch"]]


def stored(rows: Sequence[Row], batch: bool) -> tuple[str, str | None, str | None]:
    """How a failed or a remembered delivery keeps its notifications: (payload, context,
    side). One notification as it was recorded; a batch as the JSON list of its
    notifications, each with what its task id derives from, its payload and context, on the
    side 'batch'."""
    if not batch:
        return rows[0].payload, rows[0].context, None
    return _stored_batch(rows), None, "batch"


def envelope_rows(envelope: dict[str, Any]) -> list[Row]:
    """The notifications a task's envelope carries: one, or a batch's."""
    if "batch" in envelope:
        return batch_rows(envelope)
    return [Row(envelope["id"], 0, NO_SEED, envelope["channel"], envelope["trigger"],
                envelope["payload"], envelope["context"])]


def _stored_batch(rows: Sequence[Row]) -> str:
    return "[" + ", ".join(
        f'{{"id": {row.id}, "uuid": "{row.uuid}", "position": {row.position}, '
        f'"payload": {row.payload}, "context": {row.context or "null"}}}'
        for row in rows
    ) + "]"


def check(row: Row) -> None:
    """Raises what the worker would raise opening ``row``, so the bridge can keep it as failed.

    Raises:
        LookupError, TypeError, ValueError: naming what cannot be decoded.
    """
    channel, payload = _open(row.channel, row.payload)
    if issubclass(channel, channels.TriggerChannel):
        payloads.check_rows(channel.model, payload)
    else:
        payloads.decode_fields(channel, payload)


def arguments(envelope: dict[str, Any]) -> dict[str, Any]:
    """The listener's keyword arguments, decoded to their declared types.

    Trigger channels give ``old`` and ``new`` model instances; the notification context
    is under ``context``. The caller keeps those the listener accepts.
    """
    return _fields(channels.resolve(envelope["channel"]), envelope["payload"],
                   envelope.get("context"))


def notifications(channel_name: str, rows: Sequence[Row]) -> list[channels.BaseChannel]:
    """A batch's notifications as instances of their channel: a ``Channel``'s fields, or a
    ``TriggerChannel``'s ``old``, ``new`` and ``context``."""
    channel = channels.resolve(channel_name)
    instances = []
    for row in rows:
        fields = _fields(channel, row.payload, row.context)
        if not issubclass(channel, channels.TriggerChannel):
            del fields["context"]
        instances.append(typing.cast(Any, channel)(**fields))
    return instances


def _fields(channel: type[channels.BaseChannel], stored: str,
            context: str | None) -> dict[str, Any]:
    payload = payloads.load(stored)
    fields: dict[str, Any]
    if issubclass(channel, channels.TriggerChannel):
        hidden = channels.hidden_fields(channel)
        fields = {
            "old": payloads.build_instance(channel.model, payload.get("old"), hidden),
            "new": payloads.build_instance(channel.model, payload.get("new"), hidden),
        }
    else:
        fields = payloads.decode_fields(channel, payload)
    fields["context"] = tracing.without_trace(payloads.load(context)) if context else {}
    return fields


def _open(channel: str, payload: str) -> tuple[type[channels.BaseChannel], Any]:
    return channels.resolve(channel), payloads.load(payload)
