"""Notifications django-pgpubsub stored (lock mode), moved into pgcelery's outbox.

pgpubsub keeps each notification of a ``lock_notifications`` channel in
``pgpubsub_notification`` until a listener processed it, under the channel's listen-safe name
(``pgpubsub_`` and five hex digits of the SHA-1 of its dotted path). Each row is matched to a
registered pgcelery channel by that name; a trigger channel's row goes to every trigger of
the channel whose operation it records (pgpubsub ran every listener of a channel on each of
its notifications). The payload is rewritten in pgcelery's form, its context kept, and
recorded through pgcelery's stored function, as ``notify()`` records; the row is deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pgtrigger
from django.db import connections, transaction

from pgcelery import channels, payloads, registry, sql

TABLE = "pgpubsub_notification"


class NoPgpubsubTable(LookupError):
    """The database has no ``pgpubsub_notification`` table."""


@dataclasses.dataclass(frozen=True)
class Converted:
    """One pgcelery notification made from a pgpubsub row."""

    row_id: int
    channel: str
    trigger: str
    payload: str
    context: str | None


@dataclasses.dataclass
class Outcome:
    moved: list[Converted] = dataclasses.field(default_factory=list)
    #: (pgpubsub row id, why it stays)
    left: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def pgpubsub_name(channel: str) -> str:
    """The name django-pgpubsub stores and LISTENs on for the channel named ``channel``."""
    return "pgpubsub_" + hashlib.sha1(channel.encode()).hexdigest()[:5]


def move(database: str, dry_run: bool = False) -> Outcome:
    """Moves every pgpubsub row that matches a registered channel, in one transaction.

    Raises:
        NoPgpubsubTable: if ``database`` has no ``pgpubsub_notification`` table.
    """
    known = {pgpubsub_name(name): name for name in registry.registered_channels()}
    outcome = Outcome()
    with transaction.atomic(using=database), connections[database].cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [TABLE])
        if not cursor.fetchone()[0]:
            raise NoPgpubsubTable(f"Database {database!r} has no {TABLE} table: nothing to "
                                  "import.")
        cursor.execute(f"SELECT id, channel, payload::text FROM {TABLE} "
                       "ORDER BY created_at NULLS FIRST, id FOR UPDATE")
        for row_id, stored_channel, payload in cursor.fetchall():
            converted = _convert(row_id, known.get(stored_channel), json.loads(payload))
            if isinstance(converted, str):
                outcome.left.append((row_id, converted))
            else:
                outcome.moved.extend(converted)
        if not dry_run:
            _record(cursor, outcome.moved)
    return outcome


def _record(cursor: Any, moved: list[Converted]) -> None:
    for notification in moved:
        cursor.execute(sql.SET_CONTEXT, [notification.context or ""])
        cursor.execute(sql.NOTIFY, [notification.channel,
                                    channels.pg_channel(notification.channel),
                                    notification.trigger, notification.payload])
    cursor.execute(sql.SET_CONTEXT, [""])
    cursor.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)",
                   [sorted({notification.row_id for notification in moved})])


def _convert(row_id: int, name: str | None, payload: Any) -> list[Converted] | str:
    """The row as pgcelery notifications, or why it cannot be one."""
    if name is None:
        return "no registered pgcelery channel has this pgpubsub channel name"
    if not isinstance(payload, dict):
        return "the payload is not a JSON object"
    channel = channels.resolve(name)
    context = payload.get("context")
    stored_context = None if context is None else payloads.dump(context)
    try:
        if issubclass(channel, channels.TriggerChannel):
            rows = _rows(channel, payload)
            return [Converted(row_id, name, trigger, rows, stored_context)
                    for trigger in _triggers_recording(name, payload)] or \
                f"no trigger of {name} records a {_operation(payload)}"
        fields = payloads.decode_fields(channel, payload.get("kwargs"))
        return [Converted(row_id, name, "", payloads.dump(payloads.encode_fields(channel, fields)),
                          stored_context)]
    except (LookupError, TypeError, ValueError) as exc:
        return f"the payload cannot be read: {exc}"


def _rows(channel: type[channels.TriggerChannel], payload: dict[str, Any]) -> str:
    """pgcelery's trigger payload, without the columns the channel leaves out."""
    hidden = {field.column for field in channels.hidden_fields(channel)}
    rows = {side: None if payload.get(side) is None else
            {column: value for column, value in payload[side].items() if column not in hidden}
            for side in ("old", "new")}
    payloads.check_rows(channel.model, rows)
    return payloads.dump(rows)


def _operation(payload: dict[str, Any]) -> str:
    if payload.get("old") is None:
        return "INSERT"
    return "DELETE" if payload.get("new") is None else "UPDATE"


def _triggers_recording(name: str, payload: dict[str, Any]) -> list[str]:
    """The channel's triggers whose operation is the row's, in name order."""
    operation = _operation(payload)
    model = channels.resolve(name).model  # type: ignore[attr-defined]
    found = set()
    for listener in registry.registered_listeners():
        if listener.channel != name or not listener.trigger:
            continue
        for _, trigger in pgtrigger.registered(f"{model._meta.label}:{listener.trigger}"):
            if any(part.startswith(operation) for part in str(trigger.operation).split(" OR ")):
                found.add(listener.trigger)
    return sorted(found)
