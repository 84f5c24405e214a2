"""The writer's trace, continued in the listener's task (OpenTelemetry, when installed).

A notification recorded inside a span carries the span's W3C trace context (``traceparent``,
``tracestate``, and baggage if any) in its notification context, under ``TRACE_KEY``:
the one value every writer of the outbox, ``notify()`` and each trigger alike, copies from
the transaction. The bridge moves it into the task message's headers, where
opentelemetry-instrumentation-celery finds the parent of the worker's span; the listener's
``context`` never shows it.

For trigger writes the span lives in Python and the trigger in PostgreSQL: a wrapper around
the project's PostgreSQL queries sets the trace once per transaction, before its first
INSERT, UPDATE or DELETE made in a span (a write outside ``transaction.atomic()`` gets a
transaction of its own for it). Without opentelemetry-api importable nothing is installed,
and a write outside any span costs one check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from pgcelery import sql

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the extra is not installed
    otel_context = propagate = trace = None  # type: ignore[assignment]

#: The key of the notification context that holds the trace; listeners never see it.
TRACE_KEY = "pgcelery.trace"
#: Statements that may fire a trigger, as Django and most SQL start them.
_WRITES = ("INSERT", "UPDATE", "DELETE")


def available() -> bool:
    return trace is not None


def current() -> dict[str, str] | None:
    """The current span's context as W3C headers, or None outside a span."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def encoded_trace() -> str | None:
    """The current trace as the notification context it is added to (JSON), if any."""
    headers = current()
    return None if headers is None else json.dumps({TRACE_KEY: headers})


def with_trace(encoded: str) -> str:
    """An encoded notification context (a JSON object) with the current trace, if any.

    Joined as text: the user's part is not encoded again, and where it has the trace's key
    too the trace, coming last, is what the database keeps.
    """
    trace = encoded_trace()
    if trace is None:
        return encoded
    return trace if encoded == "{}" else f"{encoded[:-1]}, {trace[1:]}"


def without_trace(context: dict[str, Any]) -> dict[str, Any]:
    """A stored notification context as its listener receives it."""
    if TRACE_KEY in context:
        context = {key: value for key, value in context.items() if key != TRACE_KEY}
    return context


def headers(stored_context: str | None) -> dict[str, str] | None:
    """The trace headers a notification's stored context holds, if any."""
    if not stored_context or TRACE_KEY not in stored_context:
        return None
    found = json.loads(stored_context).get(TRACE_KEY)
    return found if isinstance(found, dict) else None


@contextmanager
def parent(found: dict[str, str] | None) -> Iterator[None]:
    """Makes the span of ``found`` (trace headers) current: a publish span that Celery's
    instrumentation opens meanwhile continues the writer's trace instead of starting one."""
    if found is None or otel_context is None:
        yield
        return
    token = otel_context.attach(propagate.extract(found))
    try:
        yield
    finally:
        otel_context.detach(token)


def is_instrumentation(receiver: Callable[..., Any]) -> bool:
    """Whether a Celery signal receiver is OpenTelemetry's: the bridge passes the writer's
    trace on itself, so its messages need not go through it."""
    return str(getattr(receiver, "__module__", "")).startswith("opentelemetry.")


def install(connection: BaseDatabaseWrapper, **_: Any) -> None:
    """Wraps the queries of a PostgreSQL connection so its writes carry the current trace
    (a ``connection_created`` receiver). Outermost, so that a wrapper installed by
    ``connection.execute_wrapper()`` meanwhile is the one it removes."""
    if connection.vendor == "postgresql" and _propagate not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, _propagate)


class _Marker:
    """An on-commit callback that does nothing: while it is in the connection's list, the
    trace it holds is set in the transaction (a rollback, of the transaction or of the
    savepoint it was set in, drops both)."""

    def __init__(self, encoded: str) -> None:
        self.encoded = encoded

    def __call__(self) -> None:
        pass


def _propagate(execute: Callable[..., Any], statement: str, params: Any, many: bool,
               context: dict[str, Any]) -> Any:
    if not statement.lstrip()[:6].upper().startswith(_WRITES):
        return execute(statement, params, many, context)
    encoded = encoded_trace()
    if encoded is None:
        return execute(statement, params, many, context)
    connection = context["connection"]
    outside = not connection.in_atomic_block
    with transaction.atomic(using=connection.alias) if outside else nullcontext():
        if not any(isinstance(entry[1], _Marker) and entry[1].encoded == encoded
                   for entry in connection.run_on_commit):
            context["cursor"].execute(sql.ADD_TO_CONTEXT, [encoded])
            connection.on_commit(_Marker(encoded))
        return execute(statement, params, many, context)
