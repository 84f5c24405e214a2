"""Channels: the dataclasses that name a stream of notifications and type its payload.

A channel is known by its dotted path (``myapp.channels.PostReads``). That name is
stored with every notification, so the bridge and the workers find the channel again
by importing it; the Postgres channel the bridge LISTENs on is derived from it.
"""

import dataclasses
import functools
import hashlib
import importlib
import typing
from collections.abc import Sequence
from typing import Any, ClassVar

from django.db import models

#: Postgres truncates identifiers, channel names included, to 63 bytes.
MAX_PG_CHANNEL_BYTES = 63


class UnknownChannel(LookupError):
    """A dotted path that does not lead to a channel dataclass."""


class BaseChannel:
    """Common base of ``Channel`` and ``TriggerChannel``."""

    @classmethod
    def name(cls) -> str:
        """The dotted path that names the channel (django-pgpubsub's ``Channel.name()``)."""
        return channel_name(cls)


class Channel(BaseChannel):
    """Base of application channels: the dataclass fields are the payload.

    Subclass it with ``@dataclass`` and call ``pgcelery.notify`` with the fields.
    """


@dataclasses.dataclass
class TriggerChannel(BaseChannel):
    """Base of trigger channels: the payload is the ``old`` and ``new`` row of ``model``.

    Its fields are django-pgpubsub's: a batch listener receives instances holding the
    rows as unsaved model instances (``None`` where the operation has none) and the
    notification's context.

    ``include_fields`` or ``exclude_fields`` (model field names) keep columns — passwords,
    tokens — from ever leaving Postgres: the trigger leaves them out, and the listener's
    ``old`` and ``new`` have them deferred, as ``Model.objects.only()`` leaves them.
    """

    model: ClassVar[type[models.Model]]
    #: Accepted for django-pgpubsub compatibility; every notification is delivered once anyway.
    lock_notifications: ClassVar[bool] = False
    #: The only fields whose columns the trigger sends (the primary key always goes).
    include_fields: ClassVar[Sequence[str] | None] = None
    #: Fields whose columns the trigger never sends.
    exclude_fields: ClassVar[Sequence[str] | None] = None

    old: models.Model | None = None
    new: models.Model | None = None
    context: dict[str, Any] = dataclasses.field(default_factory=dict)


ChannelRef = type[BaseChannel] | str


@dataclasses.dataclass(frozen=True)
class Field:
    """One payload field of a ``Channel``."""

    name: str
    type: Any
    default: Any = dataclasses.MISSING
    factory: Any = dataclasses.MISSING

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING and self.factory is dataclasses.MISSING

    def default_value(self) -> Any:
        return self.default if self.factory is dataclasses.MISSING else self.factory()


def channel_name(channel: type[BaseChannel]) -> str:
    """The dotted path that names ``channel`` in the outbox and in task messages."""
    return f"{channel.__module__}.{channel.__qualname__}"


def pg_channel(name: str) -> str:
    """The Postgres LISTEN channel of the channel named ``name``; at most 63 bytes."""
    raw = name.encode()
    if len(raw) <= MAX_PG_CHANNEL_BYTES:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:12]
    return raw[: MAX_PG_CHANNEL_BYTES - len(digest) - 1].decode(errors="ignore") + "_" + digest


def resolve(channel: ChannelRef) -> type[BaseChannel]:
    """The channel class for a class or its dotted path.

    Raises:
        UnknownChannel: if the path cannot be imported or is not a channel dataclass.
        TypeError: if ``channel`` is neither a string nor a channel class.
    """
    if isinstance(channel, str):
        return _import(channel)
    if isinstance(channel, type) and issubclass(channel, BaseChannel):
        _check_dataclass(channel, channel_name(channel))
        return channel
    raise TypeError(
        f"Expected a Channel or TriggerChannel subclass or its dotted path, got {channel!r}."
    )


@functools.cache
def _import(path: str) -> type[BaseChannel]:
    module_path, _, attr = path.rpartition(".")
    hint = "Pass the dotted path of a channel dataclass, e.g. 'myapp.channels.PostReads'."
    if not module_path:
        raise UnknownChannel(f"Unknown channel {path!r}: not a dotted path. {hint}")
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise UnknownChannel(
            f"Unknown channel {path!r}: cannot import module {module_path!r} ({exc}). {hint}"
        ) from exc
    found = getattr(module, attr, None)
    if not (isinstance(found, type) and issubclass(found, BaseChannel)):
        raise UnknownChannel(
            f"Unknown channel {path!r}: module {module_path!r} has no Channel or "
            f"TriggerChannel named {attr!r}. {hint}"
        )
    _check_dataclass(found, path)
    return found


def _check_dataclass(channel: type, name: str) -> None:
    if "." in channel.__qualname__:
        raise TypeError(
            f"Channel {name!r} is defined inside a function or a class, where the bridge and "
            "the workers cannot import it again by its dotted path. Define it at the top "
            "level of a module, e.g. in myapp/channels.py."
        )
    if not dataclasses.is_dataclass(channel):
        raise TypeError(f"Channel {name!r} must be decorated with @dataclass.")
    if issubclass(channel, TriggerChannel):
        if not _is_model(getattr(channel, "model", None)):
            raise TypeError(
                f"TriggerChannel {name!r} must set `model` to the Django model it watches."
            )
        hidden_fields(channel)


_hidden: dict[type[TriggerChannel], tuple[models.Field, ...]] = {}


def hidden_fields(channel: type[TriggerChannel]) -> tuple[models.Field, ...]:
    """The model's concrete fields that ``channel``'s triggers leave out of the payload
    (worked out once).

    Raises:
        TypeError: if ``include_fields``/``exclude_fields`` are both set, name no field of
            the model, or leave out the primary key.
    """
    found = _hidden.get(channel)
    if found is None:
        found = _hidden[channel] = _hidden_fields(channel)
    return found


def _hidden_fields(channel: type[TriggerChannel]) -> tuple[models.Field, ...]:
    name = channel_name(channel)
    include, exclude = channel.include_fields, channel.exclude_fields
    if include is None and exclude is None:
        return ()
    if include is not None and exclude is not None:
        raise TypeError(f"TriggerChannel {name!r} sets both include_fields and exclude_fields; "
                        "set one of them.")
    opts = channel.model._meta
    setting = "include_fields" if include is not None else "exclude_fields"
    listed = include if include is not None else exclude
    if isinstance(listed, str) or not isinstance(listed, Sequence):
        raise TypeError(f"TriggerChannel {name!r}: {setting} must be a list of field names "
                        f"of {opts.label}, not {listed!r}.")
    unknown = sorted(set(listed) - {field.name for field in opts.concrete_fields})
    if unknown:
        raise TypeError(f"TriggerChannel {name!r}: {setting} names {', '.join(map(repr, unknown))}"
                        f", not a field of {opts.label}.")
    if include is not None:
        return tuple(field for field in opts.concrete_fields
                     if field.name not in listed and not field.primary_key)
    if opts.pk.name in listed:
        raise TypeError(f"TriggerChannel {name!r}: exclude_fields cannot leave out the primary "
                        f"key {opts.pk.name!r}: the listener's instances are built around it.")
    return tuple(field for field in opts.concrete_fields if field.name in listed)


def _is_model(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, models.Model)


_fields: dict[type[BaseChannel], tuple[Field, ...]] = {}


def fields(channel: type[BaseChannel]) -> tuple[Field, ...]:
    """The payload fields of ``channel`` with their resolved type hints (read once).

    A field whose default is ``None`` takes ``None`` whatever its annotation, as
    django-pgpubsub lets it (``date: datetime.date = None``).
    """
    found = _fields.get(channel)
    if found is None:
        hints = typing.get_type_hints(channel)
        found = _fields[channel] = tuple(
            Field(field.name, hints[field.name] if field.default is not None
                  else hints[field.name] | None, field.default, field.default_factory)
            for field in dataclasses.fields(typing.cast(Any, channel))
        )
    return found
