"""What runs inside the worker: a listener task opens the notification it is sent.

Decorating a listener adopts its task: its ``run`` decodes the bridge's envelope into the
declared arguments, runs an ``atomic=True`` listener once per task id, and marks the
delivery of a ``redeliver_after`` listener finished. A task that fails for good is kept as a
failed delivery in the notification's database.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import functools
import inspect
import logging
import numbers
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import Task, signals
from celery.app.task import Context
from celery.exceptions import Ignore, Retry
from celery.local import Proxy
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction

from pgcelery import celery_internals, channels, keys, messages, payloads, registry, sql

logger = logging.getLogger(__name__)


def adopt(target: Task | Proxy) -> Task:
    """Teaches the task to open the bridge's notification before its own code runs.

    Only the task's ``run`` is wrapped: calls without the notification argument
    (``.delay()``, ``.apply_async()``, a direct call) behave exactly as before.
    """
    task: Task = celery_internals.current(target)
    if getattr(task, "_pgcelery_adopted", False):
        return task
    original = task.run
    accepts = _accepted_arguments(original)

    def run(*args: Any, **kwargs: Any) -> Any:
        envelope = kwargs.pop(messages.ENVELOPE, None)
        if envelope is None:  # .delay(), .apply_async(), .apply(): atomic as the listener is
            call: Callable[[], Any] = functools.partial(
                original, *map(payloads.unmarked_row, args),
                **{key: payloads.unmarked_row(value) for key, value in kwargs.items()})
            atomic = registry.is_atomic(task.name)
            database = DEFAULT_DB_ALIAS
        else:
            found = registry.find(envelope["channel"], envelope["trigger"], task.name)
            atomic = found is not None and found.atomic
            database = envelope["database"]
            call = _listener_call(original, accepts, args, envelope)
        task_id = task.request.id
        # A direct call (``task(...)``) has no task id to be run once or finished under.
        if task_id is None:
            return call()
        if atomic and isinstance(call, _Batch):
            call = functools.partial(_run_batch_once, task, envelope, call)
        elif atomic:
            call = functools.partial(_run_once, task, database, call)
        if envelope is not None and envelope.get("redeliver_after") is not None:
            call = functools.partial(_run_delivery, task, task_id, envelope, call)
        return call()

    run.__wrapped__ = original  # type: ignore[attr-defined]
    celery_internals.replace_run(task, run)
    celery_internals.replace_apply_async(task, _sending_rows(task.apply_async))
    # A retry re-sends the request's own arguments: for a notification, the envelope alone,
    # which the task's signature check (``typing=True``) would refuse.
    celery_internals.skip_argument_check(task, lambda kwargs: messages.ENVELOPE in kwargs)
    task._pgcelery_adopted = True  # type: ignore[attr-defined]
    return task


def _sending_rows(apply_async: Callable[..., Any]) -> Callable[..., Any]:
    """``apply_async`` (and so ``delay``) sending model instances as their rows, which a
    JSON message can carry: a trigger listener's ``old``/``new``, as the trigger sends them."""

    @functools.wraps(apply_async)
    def sending_rows(args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        args = None if args is None else [payloads.marked_row(value) for value in args]
        kwargs = (None if kwargs is None
                  else {key: payloads.marked_row(value) for key, value in kwargs.items()})
        return apply_async(args, kwargs, *rest, **options)

    return sending_rows


@dataclasses.dataclass
class _Batch:
    """A batch listener's run of a batch: of all its notifications, or of some of them."""

    listener: Callable[..., Any]
    args: tuple[Any, ...]
    channel: str
    rows: list[messages.Row]

    def __call__(self, rows: list[messages.Row] | None = None) -> Any:
        notifications = messages.notifications(self.channel, self.rows if rows is None else rows)
        return self.listener(*self.args, notifications=notifications)


def _listener_call(original: Callable[..., Any], accepts: frozenset[str] | None,
                   args: tuple[Any, ...], envelope: dict[str, Any]) -> Callable[[], Any]:
    """The listener's run of the envelope's notification, or batch, with decoded arguments."""
    if "batch" in envelope:
        return _Batch(original, args, envelope["channel"], messages.batch_rows(envelope))
    kwargs = messages.arguments(envelope)
    if accepts is not None:
        kwargs = {key: value for key, value in kwargs.items() if key in accepts}
    return functools.partial(original, *args, **kwargs)


def accepts_argument(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` (a task's ``run``, adopted or not) takes the keyword ``name``."""
    accepted = _accepted_arguments(getattr(function, "__wrapped__", function))
    return accepted is None or name in accepted


def _accepted_arguments(func: Callable) -> frozenset[str] | None:
    """The keyword arguments ``func`` takes, or None when it takes ``**kwargs``."""
    parameters = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters)


def _run_once(task: Task, database: str, call: Callable[[], Any]) -> Any:
    """Runs ``call`` in one transaction with a record of the task id.

    A repeat of a committed run is a no-op that stores no state (Celery's ``Ignore``), so
    a result backend keeps the result of the run that took effect.
    """
    with transaction.atomic(using=database):
        with connections[database].cursor() as cursor:
            cursor.execute(sql.RECORD_TASK, [task.request.id])
            first = cursor.fetchone()[0]
        if first:
            return call()
    logger.info("Task %s[%s] already ran; skipping the repeat.", task.name, task.request.id)
    raise Ignore()


def _run_batch_once(task: Task, envelope: dict[str, Any], batch: _Batch) -> Any:
    """Runs an ``atomic=True`` batch in one transaction with a record of each notification's
    task id, on the notifications not recorded yet.

    Each notification counts once, so a batch made again of other notifications (a
    bridge that crashed, then claimed newer ones with them) runs only the new ones.
    """
    database = envelope["database"]
    keys = [messages.task_id(row, task.name, envelope["trigger"]) for row in batch.rows]
    with transaction.atomic(using=database):
        with connections[database].cursor() as cursor:
            cursor.execute(sql.RECORD_TASKS, [keys])
            new = {key for (key,) in cursor.fetchall()}
        if new:
            return batch([row for row, key in zip(batch.rows, keys, strict=True) if key in new])
    logger.info("Task %s[%s] already ran; skipping the repeat.", task.name, task.request.id)
    raise Ignore()


def _run_delivery(task: Task, task_id: str, envelope: dict[str, Any],
                  call: Callable[[], Any]) -> Any:
    """Runs a delivery of a ``redeliver_after`` listener, then marks it finished.

    A copy of a delivery that finished already (published again while it ran, or while
    it waited in a queue) is skipped. A Celery retry puts the next redelivery off by the
    retry's delay; a failure for good finishes it as a failed delivery.
    """
    database, task_name = envelope["database"], task.name
    if may_be_a_copy(task.request, envelope) and delivery_finished(database, task_id):
        logger.info("Task %s[%s] finished already; skipping this copy.", task_name, task_id)
        raise Ignore()
    try:
        result = call()
    except Retry as exc:
        _postpone_delivery(database, task_id, _seconds_until(exc.when))
        raise
    except Ignore:
        finish_delivery(database, task_id, _wakes(envelope, task_name))
        raise
    finish_delivery(database, task_id, _wakes(envelope, task_name))
    return result


def may_be_a_copy(request: Context, envelope: dict[str, Any]) -> bool:
    """Whether the message may be a copy of a delivery that finished already, and must be
    looked up: one the bridge published again, the broker delivered again, or Celery retried.

    The first publish of a delivery, taken within half its ``redeliver_after``, cannot be:
    the bridge publishes a copy only a whole period after it (the other half allows for the
    clocks of the bridge and the worker to differ).
    """
    published = envelope.get("published_at")
    if (published is None or request.retries
            or (request.delivery_info or {}).get("redelivered")):
        return True
    return bool(time.time() - published >= envelope["redeliver_after"] / 2)


def delivery_finished(database: str, task_id: str) -> bool:
    """Whether the delivery ``task_id`` finished already (it may be published again since)."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql.DELIVERY_FINISHED, [task_id])
        return bool(cursor.fetchone()[0])


def _seconds_until(when: numbers.Real | datetime.datetime | None) -> float:
    if isinstance(when, datetime.datetime):
        return max((when - datetime.datetime.now(datetime.timezone.utc)).total_seconds(), 0.0)
    return float(when or 0)


def finish_delivery(database: str, task_id: str, wake: str | None = None) -> None:
    """Marks the delivery finished, waking the bridges on pg channel ``wake`` if given; if
    the database is unreachable, it will be published again and its next run, if
    ``atomic=True``, is a no-op."""
    try:
        with connections[database].cursor() as cursor:
            cursor.execute(*_finishing(task_id, wake))
    except DatabaseError as exc:
        logger.error("Could not mark delivery %s finished in database %r (%s): it will be "
                     "published again after its redeliver_after.", task_id, database, exc)


def _wakes(envelope: dict[str, Any], task_name: str) -> str | None:
    """The pg channel a finished delivery wakes the bridges on: for a listener with key
    options, whose next notification of the key waits for it; else none."""
    found = registry.find(envelope["channel"], envelope["trigger"], task_name)
    if found is None or found.keys is None:
        return None
    return channels.pg_channel(envelope["channel"])


def _finishing(task_id: str, wake: str | None) -> tuple[str, list[str]]:
    if wake is None:
        return sql.FINISH_DELIVERY, [task_id]
    return sql.FINISH_KEYED_DELIVERY, [task_id, wake, keys.freed(task_id)]


def _postpone_delivery(database: str, task_id: str, seconds: float) -> None:
    try:
        with connections[database].cursor() as cursor:
            cursor.execute(sql.POSTPONE_DELIVERY, [task_id, seconds])
    except DatabaseError as exc:
        logger.error("Could not put off the redelivery of retried task %s in database %r "
                     "(%s): a copy may be published before the retry runs.",
                     task_id, database, exc)


#: Whether a listener's task that fails for good is kept as a failed delivery: not where
#: its exception is raised to the caller instead (``pgcelery.testing``'s eager runs).
_recording_failures: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pgcelery_recording_failures", default=True)


@contextlib.contextmanager
def failures_recorded(recorded: bool) -> Iterator[None]:
    """Whether the tasks run in this block keep their failures as failed deliveries."""
    token = _recording_failures.set(recorded)
    try:
        yield
    finally:
        _recording_failures.reset(token)


@signals.task_failure.connect
def record_failed_delivery(sender: Task | None = None, task_id: str | None = None,
                           exception: BaseException | None = None,
                           kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    """Keeps a listener's task that failed for good as a failed delivery of its notification.

    Celery sends ``task_failure`` once per delivery: after the last retry, not for each
    attempt, and also for a rejected message or a hard time limit (in the worker's main
    process). The row goes to the database the notification came from; it names the
    listener and the task id, so a retry runs that listener only, under the same id.
    """
    envelope = (kwargs or {}).get(messages.ENVELOPE)
    if envelope is None or sender is None or task_id is None or not _recording_failures.get():
        return
    request = sender.request
    attempts = (request.retries if request.id == task_id else 0) + 1
    _keep_failed_delivery(envelope, sender.name, task_id, attempts,
                          f"{type(exception).__name__}: {exception}",
                          reuse_connection=bool(request.is_eager))


@signals.task_unknown.connect
def record_unknown_listener(message: Any = None, name: str | None = None,
                            id: str | None = None, **_: Any) -> None:
    """Keeps a message for a listener this worker does not know (renamed or removed while
    its messages waited in the broker) as a failed delivery of that listener: Celery
    discards the message, and a retry publishes it again once the listener is back."""
    try:
        _args, kwargs, _embed = message.decode()
    except (TypeError, ValueError):  # not a task message of Celery's protocol 2
        return
    envelope = kwargs.get(messages.ENVELOPE) if isinstance(kwargs, dict) else None
    if envelope is None or name is None or id is None:
        return
    _keep_failed_delivery(envelope, name, id, 1,
                          f"NotRegistered: the worker does not know listener {name}: deploy "
                          "it, then retry the failed delivery, or discard it")


def _keep_failed_delivery(envelope: dict[str, Any], task_name: str, task_id: str,
                          attempts: int, reason: str, reuse_connection: bool = False) -> None:
    """Records the envelope's notifications as one failed delivery of ``task_name`` in the
    database they came from; ``reuse_connection`` for an eager run, whose connection is its
    caller's."""
    database = envelope["database"]
    batch = "batch" in envelope
    rows = messages.envelope_rows(envelope)
    what = (f"a batch of {len(rows)} notification(s) from {rows[0].id}" if batch
            else f"notification {rows[0].id}")
    payload, context, side = messages.stored(rows, batch)
    values = [envelope["channel"], envelope["trigger"], payload, context, reason, task_name,
              task_id, attempts, len(rows), side]
    try:
        connection = connections[database]
        if not reuse_connection:
            connection.close_if_unusable_or_obsolete()  # the failure may have broken it
        with transaction.atomic(using=database), connection.cursor() as cursor:
            cursor.execute(sql.RECORD_FAILED_DELIVERY, values)
            if envelope.get("redeliver_after") is not None:
                cursor.execute(*_finishing(task_id, _wakes(envelope, task_name)))
    except DatabaseError as exc:
        logger.error(
            "Could not record the failed delivery of task %s[%s] (%s on %s, failed with %s) "
            "in database %r: %s. It is in this log and in the result backend only; its "
            "payload was %.2000s",
            task_name, task_id, what, envelope["channel"], reason, database, exc, values[2],
        )
    else:
        logger.warning("Task %s[%s] failed for good after %d attempt(s): kept as a failed "
                       "delivery of %s on %s.", task_name, task_id, attempts, what,
                       envelope["channel"])
