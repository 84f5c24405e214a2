"""``notify()``: records a notification in the caller's transaction."""

from __future__ import annotations

from typing import Any

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
    resolved = channels.resolve(channel)
    name = channels.channel_name(resolved)
    if not issubclass(resolved, channels.Channel):
        raise TypeError(
            f"{name} is a TriggerChannel: its notifications come from its triggers. "
            "Declare a Channel to notify explicitly."
        )
    payload = payloads.dump(payloads.encode_fields(resolved, kwargs))
    arguments = [name, channels.pg_channel(name), "", payload]
    trace = tracing.encoded_trace()
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
    alias = using or DEFAULT_DB_ALIAS
    if not isinstance(context, dict):
        raise TypeError(f"set_notification_context() takes a dict, got {type(context).__name__}.")
    if not connections[alias].in_atomic_block:
        raise TransactionManagementError(
            "set_notification_context() must be called inside transaction.atomic() "
            f"on database {alias!r}: the context belongs to one transaction."
        )
    value = payloads.encode(context, dict)
    encoded = payloads.dump(value)
    size, limit = len(encoded.encode()), conf.context_max_bytes()
    if size > limit:
        raise ValueError(
            f"set_notification_context(): the context is {size:,} bytes as JSON, over "
            f"PGCELERY_CONTEXT_MAX_BYTES ({limit:,}). It is copied into every notification "
            "of the transaction: keep ids in it and let listeners load the rest, or raise "
            "the setting."
        )
    with connections[alias].cursor() as cursor:
        # The writes of a span carry its trace.
        cursor.execute(sql.SET_CONTEXT, [tracing.with_trace(encoded)])
