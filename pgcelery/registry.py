"""The registry of listeners: which tasks a notification of a channel (and trigger) goes to.

Filled by the decorators when the apps' ``listeners`` and ``tasks`` modules (or any module
imported at start-up) are imported; read by the
bridge to dispatch and by the worker to open a notification.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Any

from pgcelery import conf

if TYPE_CHECKING:
    from pgcelery.keys import Keys

#: ``redeliver_after`` of a listener with key options where neither it nor
#: ``PGCELERY_REDELIVER_AFTER`` sets one: a worker lost mid-task holds its key this long.
KEYED_REDELIVER_AFTER = 300.0


class Default(enum.Enum):
    """An option the listener left to its setting."""

    SETTING = "setting"


@dataclasses.dataclass(frozen=True)
class Listener:
    """One task registered on one channel (and, for trigger channels, one trigger)."""

    task_name: str
    channel: str
    trigger: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    atomic: bool = False
    #: Seconds after which an unfinished delivery is published again; None: never.
    redeliver_after: float | None | Default = Default.SETTING
    #: Most notifications one task receives at once; None: one per task, as its arguments.
    batch: int | None = None
    #: ``key``, ``ordered``, ``debounce``, ``concurrency`` (see ``keys``); None: none of them.
    keys: Keys | None = None

    def redelivery_period(self) -> float | None:
        """``redeliver_after``, or ``PGCELERY_REDELIVER_AFTER`` where the listener set none;
        a listener with key options always has one, so that a lost worker's key is freed."""
        period = (conf.redeliver_after() if self.redeliver_after is Default.SETTING
                  else self.redeliver_after)
        if period is None and self.keys is not None:
            return KEYED_REDELIVER_AFTER
        return period


#: The module of every installed app where listeners are looked for, at start-up.
LISTENER_MODULES = ("listeners", "tasks")

_listeners: dict[tuple[str, str], dict[str, Listener]] = {}


def where_listeners_live() -> str:
    """Where listeners are looked for, as a user reads it in a failure's reason."""
    modules = " and ".join(f"{module}.py" for module in LISTENER_MODULES)
    return f"every installed app's {modules}, and any module imported at start-up"


def listeners_for(channel: str, trigger: str) -> list[Listener]:
    """The listeners a notification of ``channel`` recorded by ``trigger`` goes to."""
    return list(_listeners.get((channel, trigger), {}).values())


def registered_listeners() -> list[Listener]:
    """Every registered listener."""
    return [listener for found in _listeners.values() for listener in found.values()]


def registered_channels() -> list[str]:
    """Dotted names of every channel with at least one listener."""
    return sorted({channel for channel, _ in _listeners})


def find(channel: str, trigger: str, task_name: str) -> Listener | None:
    """The listener of ``task_name`` on ``channel`` and ``trigger``, if registered."""
    return _listeners.get((channel, trigger), {}).get(task_name)


def register(listener: Listener) -> None:
    _listeners.setdefault((listener.channel, listener.trigger), {})[listener.task_name] = listener


def is_atomic(task_name: str) -> bool:
    """Whether any listener of ``task_name`` was registered with ``atomic=True``."""
    return any(found.atomic for found in registered_listeners() if found.task_name == task_name)
