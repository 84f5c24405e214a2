"""The task message: what the bridge sends for one notification and one listener.

The message carries the stored JSON untouched, in one keyword argument; the worker
decodes it into the declared types just before the listener runs, so Decimal or large
rows cross the broker exactly as stored. The bridge only checks that it will decode.
"""

from __future__ import annotations

import hashlib
import typing
import uuid
from typing import Any

from pgcelery import channels, payloads

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


def task_id(row: Row, task_name: str, trigger: str) -> str:
    """The Celery task id of one listener's run of one notification: a redelivery repeats it,
    and a failed delivery keeps the one it had.

    ``uuid5(row.uuid, "task|trigger|position")``, written out: ``uuid.uuid5`` took a tenth
    of the bridge's time per message.
    """
    if row.task_id is not None:
        return row.task_id
    name = f"{task_name}|{trigger}|{row.position}".encode()
    digest = bytearray(hashlib.sha1(row.uuid.bytes + name).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # RFC 4122 variant
    hexa = digest.hex()
    return f"{hexa[:8]}-{hexa[8:12]}-{hexa[12:16]}-{hexa[16:20]}-{hexa[20:]}"


def envelope(row: Row, database: str, redeliver_after: float | None = None) -> dict[str, Any]:
    """What the listener's task receives; ``redeliver_after`` tells it to mark its delivery
    finished, and is left out for listeners without it."""
    opened = {
        "id": row.id,
        "channel": row.channel,
        "trigger": row.trigger,
        "payload": row.payload,
        "context": row.context,
        "database": database,
    }
    if redeliver_after is not None:
        opened["redeliver_after"] = redeliver_after
    return opened


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
    channel, payload = _open(envelope["channel"], envelope["payload"])
    kwargs: dict[str, Any]
    if issubclass(channel, channels.TriggerChannel):
        hidden = channels.hidden_fields(channel)
        kwargs = {
            "old": payloads.build_instance(channel.model, payload.get("old"), hidden),
            "new": payloads.build_instance(channel.model, payload.get("new"), hidden),
        }
    else:
        kwargs = payloads.decode_fields(channel, payload)
    context = envelope.get("context")
    kwargs["context"] = payloads.load(context) if context else {}
    return kwargs


def _open(channel: str, payload: str) -> tuple[type[channels.BaseChannel], Any]:
    return channels.resolve(channel), payloads.load(payload)
