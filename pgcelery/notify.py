"""``notify()``: records a notification in the caller's transaction; ``anotify()`` from
async code.

The async forms check their arguments in the caller's event loop, so a mistake raises at
the call site, then write through ``sync_to_async`` on Django's one thread for the
database, as Django's async ORM does: inside a ``sync_to_async`` block that opened
``transaction.atomic()``, they are part of that transaction.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.transaction import TransactionManagementError

from pgcelery import channels, conf, payloads, sql, tracing


def notify(channel: channels.ChannelRef, *, using: str | None = None, **kwargs: Any) -> None:
    """Records a notification on ``channel`` in the current transaction of ``using``.

    The fields are checked against the channel before anything is written. The
    notification is dispatched once the transaction commits, and never if it rolls back.

    Raises:
        pgcelery.UnknownChannel: if the dotted path names no channel.
        TypeError: on a missing, unexpected or wrongly typed field.
        ValueError: on a value JSON or PostgreSQL cannot hold (NaN, a NUL character).
    """
    _record(using, _notification(channel, kwargs))


async def anotify(channel: channels.ChannelRef, *, using: str | None = None,
                  **kwargs: Any) -> None:
    """``notify`` for async code: checks the fields at once, then records the
    notification as Django's async ORM writes (see the module's docstring)."""
    await sync_to_async(_record)(using, _notification(channel, kwargs))


def _notification(channel: channels.ChannelRef, kwargs: dict[str, Any]) -> list[str | None]:
    """The checked arguments of the notification, then of ``sql.NOTIFY``; the writer's trace
    first, where there is one."""
    resolved = channels.resolve(channel)
    name = channels.channel_name(resolved)
    if not issubclass(resolved, channels.Channel):
        raise TypeError(
            f"{name} is a TriggerChannel: its notifications come from its triggers. "
            "Declare a Channel to notify explicitly."
        )
    payload = payloads.dump(payloads.encode_fields(resolved, kwargs))
    return [tracing.encoded_trace(), name, channels.pg_channel(name), "", payload]


def _record(using: str | None, notification: list[str | None]) -> None:
    trace, *arguments = notification
    with connections[using or DEFAULT_DB_ALIAS].cursor() as cursor:
        if trace is None:
            cursor.execute(sql.NOTIFY, arguments)
        else:
            cursor.execute(sql.NOTIFY_TRACED, [trace, *arguments])


def set_notification_context(context: dict[str, Any], using: str | None = None) -> None:
    """Attaches ``context`` to every notification of the current transaction.

    Triggers and ``notify`` alike carry it; listeners that declare a ``context``
    parameter receive it. It ends with the transaction, so a pooled connection never
    carries it into the next one.

    Raises:
        TransactionManagementError: outside ``transaction.atomic()``, where there is no
            transaction for the context to belong to.
        TypeError: if ``context`` is not a JSON-serialisable dict.
        ValueError: if it is larger than ``PGCELERY_CONTEXT_MAX_BYTES`` as JSON: it is
            copied into every notification of the transaction.
    """
    _set_context(using or DEFAULT_DB_ALIAS, _encoded_context(context))


async def aset_notification_context(context: dict[str, Any], using: str | None = None) -> None:
    """``set_notification_context`` for async code: checks the context at once, then
    sets it in the transaction of ``using`` on Django's database thread, which a
    ``sync_to_async`` block has opened with ``transaction.atomic()``."""
    await sync_to_async(_set_context)(using or DEFAULT_DB_ALIAS, _encoded_context(context))


def _encoded_context(context: dict[str, Any]) -> str:
    if not isinstance(context, dict):
        raise TypeError(f"set_notification_context() takes a dict, got {type(context).__name__}.")
    encoded = payloads.dump(payloads.encode(context, dict))
    size, limit = len(encoded.encode()), conf.context_max_bytes()
    if size > limit:
        raise ValueError(
            f"set_notification_context(): the context is {size:,} bytes as JSON, over "
            f"PGCELERY_CONTEXT_MAX_BYTES ({limit:,}). It is copied into every notification "
            "of the transaction: keep ids in it and let listeners load the rest, or raise "
            "the setting."
        )
    return encoded


def _set_context(alias: str, encoded: str) -> None:
    if not connections[alias].in_atomic_block:
        raise TransactionManagementError(
            "set_notification_context() must be called inside transaction.atomic() "
            f"on database {alias!r}: the context belongs to one transaction."
        )
    with connections[alias].cursor() as cursor:
        # The writes of a span carry its trace.
        cursor.execute(sql.SET_CONTEXT, [tracing.with_trace(encoded)])
