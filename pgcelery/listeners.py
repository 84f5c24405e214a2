"""Listener decorators and the registry the bridge dispatches from.

A listener is a Celery task. Decorating a plain function turns it into a shared task;
decorating an existing task registers it as it is. Either way the task learns to open
the notification the bridge sends it, and stays an ordinary Celery task.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

import pgtrigger
from celery import Task, shared_task
from celery.local import Proxy
from django.db import connections, transaction

from pgcelery import celery_internals, channels, messages, sql, triggers

logger = logging.getLogger(__name__)

#: Options that say where and how the bridge dispatches the listener's task.
DISPATCH_OPTIONS = ("queue", "priority", "countdown", "expires")

TaskT = TypeVar("TaskT", bound=Task)
P = ParamSpec("P")
R = TypeVar("R")


class ListenerDecorator(Protocol):
    """What the decorators return: a task stays the task it was; a function becomes one."""

    @overload
    def __call__(self, target: TaskT, /) -> TaskT: ...

    @overload
    def __call__(self, target: Callable[P, R], /) -> Task[P, R]: ...


@dataclasses.dataclass(frozen=True)
class Listener:
    """One task registered on one channel (and, for trigger channels, one trigger)."""

    task_name: str
    channel: str
    trigger: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    atomic: bool = False


_listeners: dict[tuple[str, str], dict[str, Listener]] = {}


def listeners_for(channel: str, trigger: str) -> list[Listener]:
    """The listeners a notification of ``channel`` recorded by ``trigger`` goes to."""
    return list(_listeners.get((channel, trigger), {}).values())


def registered_listeners() -> list[Listener]:
    """Every registered listener."""
    return [listener for found in _listeners.values() for listener in found.values()]


def registered_channels() -> list[str]:
    """Dotted names of every channel with at least one listener."""
    return sorted({channel for channel, _ in _listeners})


def _find(channel: str, trigger: str, task_name: str) -> Listener | None:
    return _listeners.get((channel, trigger), {}).get(task_name)


def listener(channel: channels.ChannelRef, **options: Any) -> ListenerDecorator:
    """Makes the decorated function or task a listener of an application ``Channel``.

    Args:
        channel: The channel class or its dotted path.
        **options: ``queue``, ``priority``, ``countdown``, ``expires`` (how the bridge
            dispatches the task); ``atomic=True`` for exactly-once database effects; any
            other option goes to ``shared_task`` when decorating a plain function.
    """
    resolved = _channel_of_kind(channel, channels.Channel, "listener")
    return _decorator(resolved, "", options)


def trigger_listener(
    channel: channels.ChannelRef,
    *,
    when: pgtrigger.When,
    operation: pgtrigger.Operation,
    condition: pgtrigger.Condition | None = None,
    **options: Any,
) -> ListenerDecorator:
    """Makes the decorated function or task a listener of a ``TriggerChannel``'s trigger.

    Args:
        channel: The trigger channel class or its dotted path.
        when: ``pgtrigger.Before`` or ``pgtrigger.After``.
        operation: ``pgtrigger.Insert``, ``pgtrigger.Update``, ``pgtrigger.Delete`` or
            a union of them, e.g. ``pgtrigger.Insert | pgtrigger.Update``.
        condition: Any pgtrigger condition, e.g. ``pgtrigger.AnyChange('name')``.
        **options: As for :func:`listener`.
    """
    resolved = _channel_of_kind(channel, channels.TriggerChannel, "trigger_listener")
    trigger = triggers.register(resolved, when=when, operation=operation, condition=condition)
    return _decorator(resolved, trigger, options)


def _shorthand(name: str, when: pgtrigger.When,
               operation: pgtrigger.Operation) -> Callable[..., ListenerDecorator]:
    def decorator(
        channel: channels.ChannelRef,
        *,
        condition: pgtrigger.Condition | None = None,
        **options: Any,
    ) -> ListenerDecorator:
        return trigger_listener(
            channel, when=when, operation=operation, condition=condition, **options
        )

    decorator.__name__ = decorator.__qualname__ = name
    decorator.__doc__ = f"``trigger_listener`` for {when} {operation}."
    return decorator


_SAVE = pgtrigger.Insert | pgtrigger.Update
pre_save_listener = _shorthand("pre_save_listener", pgtrigger.Before, _SAVE)
post_save_listener = _shorthand("post_save_listener", pgtrigger.After, _SAVE)
pre_insert_listener = _shorthand("pre_insert_listener", pgtrigger.Before, pgtrigger.Insert)
post_insert_listener = _shorthand("post_insert_listener", pgtrigger.After, pgtrigger.Insert)
pre_update_listener = _shorthand("pre_update_listener", pgtrigger.Before, pgtrigger.Update)
post_update_listener = _shorthand("post_update_listener", pgtrigger.After, pgtrigger.Update)
pre_delete_listener = _shorthand("pre_delete_listener", pgtrigger.Before, pgtrigger.Delete)
post_delete_listener = _shorthand("post_delete_listener", pgtrigger.After, pgtrigger.Delete)


def _channel_of_kind(channel: channels.ChannelRef, kind: type, decorator: str) -> type:
    resolved = channels.resolve(channel)
    if not issubclass(resolved, kind):
        other = "trigger_listener" if kind is channels.Channel else "listener"
        raise TypeError(
            f"{decorator}() takes a {kind.__name__}; {channels.channel_name(resolved)} "
            f"is not one. Use {other}() or the pre_/post_ decorators for it."
        )
    return resolved


def _decorator(channel: type, trigger: str, options: dict[str, Any]) -> ListenerDecorator:
    options = dict(options)
    atomic = bool(options.pop("atomic", False))
    dispatch = {key: options.pop(key) for key in DISPATCH_OPTIONS if key in options}
    name = channels.channel_name(channel)

    def decorate(target: Any) -> Any:
        if isinstance(target, (Task, Proxy)):
            if options:
                raise TypeError(
                    f"{', '.join(sorted(options))}: task options apply only when a listener "
                    f"decorates a plain function; set them on the task itself ({target!r})."
                )
            result = target
        else:
            result = shared_task(**options)(target)
        task = _adopt(result)
        listener = Listener(task.name, name, trigger, dispatch, atomic)
        _listeners.setdefault((name, trigger), {})[task.name] = listener
        return result

    return cast(ListenerDecorator, decorate)


def _adopt(target: Task | Proxy) -> Task:
    """Teaches the task to open the bridge's notification before its own code runs.

    Only the task's ``run`` is wrapped: calls without the notification argument
    (``.delay()``, ``.apply_async()``, a direct call) behave exactly as before.
    """
    task: Task = target._get_current_object() if isinstance(target, Proxy) else target
    if getattr(task, "_pgcelery_adopted", False):
        return task
    original = task.run
    accepts = _accepted_arguments(original)

    def run(*args: Any, **kwargs: Any) -> Any:
        envelope = kwargs.pop(messages.ENVELOPE, None)
        if envelope is None:
            return original(*args, **kwargs)
        arguments = messages.arguments(envelope)
        if accepts is not None:
            arguments = {key: value for key, value in arguments.items() if key in accepts}
        found = _find(envelope["channel"], envelope["trigger"], task.name)
        if found is not None and found.atomic:
            return _run_once(task, envelope["database"], lambda: original(*args, **arguments))
        return original(*args, **arguments)

    run.__wrapped__ = original  # type: ignore[attr-defined]
    celery_internals.replace_run(task, run)
    # A retry re-sends the request's own arguments: for a notification, the envelope alone,
    # which the task's signature check (``typing=True``) would refuse.
    celery_internals.skip_argument_check(task, lambda kwargs: messages.ENVELOPE in kwargs)
    task._pgcelery_adopted = True  # type: ignore[attr-defined]
    return task


def _accepted_arguments(func: Callable) -> frozenset[str] | None:
    """The keyword arguments ``func`` takes, or None when it takes ``**kwargs``."""
    parameters = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters)


def _run_once(task: Task, database: str, call: Callable[[], Any]) -> Any:
    """Runs ``call`` in one transaction with a record of the task id; a repeat is a no-op."""
    with transaction.atomic(using=database):
        with connections[database].cursor() as cursor:
            cursor.execute(sql.RECORD_TASK, [task.request.id])
            first = cursor.rowcount == 1
        if not first:
            logger.info("Task %s[%s] already ran; skipping the repeat.", task.name, task.request.id)
            return None
        return call()
