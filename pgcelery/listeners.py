"""The listener decorators.

A listener is a Celery task. Decorating a plain function turns it into a shared task;
decorating an existing task registers it as it is. Either way the task is registered for
the bridge and adopted for the worker (see ``worker``), and stays an ordinary Celery task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

import pgtrigger
from celery import Task, shared_task
from celery.local import Proxy

from pgcelery import channels, conf, keys, registry, triggers, worker

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


def listener(channel: channels.ChannelRef, **options: Any) -> ListenerDecorator:
    """Makes the decorated function or task a listener of an application ``Channel``.

    Args:
        channel: The channel class or its dotted path.
        **options: ``queue``, ``priority``, ``countdown``, ``expires`` (how the bridge
            dispatches the task); ``atomic=True`` for exactly-once database effects;
            ``redeliver_after=SECONDS`` to publish a delivery again while its task has not
            finished that long after its publish (``None`` turns off
            ``PGCELERY_REDELIVER_AFTER`` for this listener); ``batch=N`` to receive up to N
            notifications at once, as a list in the one argument ``notifications``;
            ``key=FIELD`` with ``ordered=True`` (or ``"block"``), ``debounce=SECONDS``
            (``debounce_max=SECONDS``) or ``concurrency=N`` to run the notifications of one
            key in commit order, one at a time, merged, or N at most at once (see
            ``pgcelery.keys``); any other option goes to ``shared_task`` when decorating a
            plain function.
    """
    resolved = _channel_of_kind(channel, channels.Channel, "listener")
    return _decorator(resolved, "", options)


def trigger_listener(
    channel: channels.ChannelRef,
    trigger: pgtrigger.Trigger | None = None,
    *,
    when: pgtrigger.When | None = None,
    operation: pgtrigger.Operation | None = None,
    condition: pgtrigger.Condition | None = None,
    **options: Any,
) -> ListenerDecorator:
    """Makes the decorated function or task a listener of a ``TriggerChannel``'s trigger.

    Args:
        channel: The trigger channel class or its dotted path.
        trigger: A pgtrigger ``Trigger`` whose ``when``, ``operation`` and ``condition``
            are taken, as django-pgpubsub's ``trigger_listener(channel, trigger)`` does;
            or none, and these three given instead.
        when: ``pgtrigger.Before`` or ``pgtrigger.After``.
        operation: ``pgtrigger.Insert``, ``pgtrigger.Update``, ``pgtrigger.Delete`` or
            a union of them, e.g. ``pgtrigger.Insert | pgtrigger.Update``.
        condition: Any pgtrigger condition, e.g. ``pgtrigger.AnyChange('name')``.
        **options: As for ``listener``.
    """
    resolved = _channel_of_kind(channel, channels.TriggerChannel, "trigger_listener")
    if trigger is not None:
        if not isinstance(trigger, pgtrigger.Trigger):
            raise TypeError(f"trigger_listener() takes a pgtrigger Trigger, not {trigger!r}.")
        if (when, operation, condition) != (None, None, None):
            raise TypeError("trigger_listener() takes a pgtrigger Trigger or when=, operation= "
                            "and condition=, not both.")
        when, operation, condition = trigger.when, trigger.operation, trigger.condition
    if when is None or operation is None:
        raise TypeError(f"trigger_listener({channels.channel_name(resolved)}) needs when= and "
                        "operation= (e.g. pgtrigger.After, pgtrigger.Insert), or a pgtrigger "
                        "Trigger that has them.")
    name = triggers.register(resolved, when=when, operation=operation, condition=condition)
    return _decorator(resolved, name, options)


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
    redeliver_after = _redeliver_after(options)
    batch = _batch(options)
    keyed = keys.of(channel, options)
    name = channels.channel_name(channel)
    if keyed is not None and redeliver_after is None:
        raise TypeError(f"Listener of {name}: key options need redeliver_after, which frees "
                        "the key of a worker lost mid-task; leave it out (300 s) or give the "
                        "seconds.")
    dispatch = {key: options.pop(key) for key in DISPATCH_OPTIONS if key in options}

    def decorate(target: Any) -> Any:
        if batch is not None:
            _check_takes_notifications(target, batch)
        if isinstance(target, (Task, Proxy)):
            if options:
                raise TypeError(
                    f"{', '.join(sorted(options))}: task options apply only when a listener "
                    f"decorates a plain function; set them on the task itself ({target!r})."
                )
            result = target
        else:
            result = shared_task(**options)(target)
        task = worker.adopt(result)
        registry.register(
            registry.Listener(task.name, name, trigger, dispatch, atomic, redeliver_after, batch,
                              keyed)
        )
        return result

    return cast(ListenerDecorator, decorate)


def _redeliver_after(options: dict[str, Any]) -> float | None | registry.Default:
    if "redeliver_after" not in options:
        return registry.Default.SETTING
    value = options.pop("redeliver_after")
    return None if value is None else conf.positive_seconds("redeliver_after", value)


def _batch(options: dict[str, Any]) -> int | None:
    value = options.pop("batch", None)
    return None if value is None else conf.positive_int("batch", value)


def _check_takes_notifications(target: Any, batch: int) -> None:
    function = target.run if isinstance(target, (Task, Proxy)) else target  # type: ignore[union-attr]
    if not worker.accepts_argument(function, "notifications"):
        raise TypeError(
            f"Listener {getattr(target, 'name', None) or function.__qualname__} has "
            f"batch={batch}: it receives its batch as the one argument `notifications`, "
            "which it does not take. Define it as `def listener(notifications): ...`."
        )
