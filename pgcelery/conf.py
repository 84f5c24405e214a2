"""Every ``PGCELERY_*`` setting, read and checked in one place, each with its default.

Each function raises ``ImproperlyConfigured`` naming the setting and its value when the
value is unusable; ``check`` reads them all, so a command stops at start rather than
spinning on a batch size of 0 or busy-looping on a sweep interval of 0.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from celery import Celery
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.models import Q
from django.utils.module_loading import import_string

from pgcelery import filters


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def _invalid(name: str, value: Any, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name} must be {expected}; it is {value!r}.")


def positive_int(name: str, value: Any) -> int:
    """``value`` as an integer of at least 1; ``name`` is what the message calls it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(name, value, "an integer of at least 1")
    return value


def positive_seconds(name: str, value: Any) -> float:
    """``value`` as a number of seconds above 0; ``name`` is what the message calls it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _invalid(name, value, "a number of seconds greater than 0")
    return float(value)


def seconds(name: str, value: Any) -> datetime.timedelta:
    """``value`` (seconds, or a timedelta) as a duration of 0 or more."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise _invalid(name, value, "a number of seconds of 0 or more")
    return datetime.timedelta(seconds=value)


def database_alias(name: str, value: Any) -> str:
    """``value`` as the alias of a PostgreSQL database in ``DATABASES``."""
    if not isinstance(value, str) or value not in settings.DATABASES:
        known = ", ".join(map(repr, settings.DATABASES))
        raise _invalid(name, value, f"an alias of settings.DATABASES ({known})")
    vendor = connections[value].vendor
    if vendor != "postgresql":
        raise _invalid(name, value, f"a PostgreSQL database (it is {vendor})")
    return value


def database_aliases(name: str, value: Any) -> list[str]:
    """``value`` as a non-empty list of distinct PostgreSQL database aliases."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise _invalid(name, value, "a non-empty list of database aliases")
    aliases = [database_alias(name, alias) for alias in value]
    if len(set(aliases)) != len(aliases):
        raise _invalid(name, value, "a list of distinct database aliases")
    return aliases


def database() -> str:
    """The database the bridge drains when ``PGCELERY_DATABASES`` is not set.

    ``atomic=True`` listeners do not use it: they run on the database their notification
    came from.
    """
    return database_alias("PGCELERY_DATABASE", _setting("PGCELERY_DATABASE", "default"))


def databases() -> list[str]:
    """The databases one bridge drains: ``PGCELERY_DATABASES``, or ``[PGCELERY_DATABASE]``."""
    value = _setting("PGCELERY_DATABASES", None)
    if value is None:
        return [database()]
    return database_aliases("PGCELERY_DATABASES", value)


def command_database(option: str | None) -> str:
    """The database a command works on: its ``--database``, or the first the bridge drains."""
    return database_alias("--database", option) if option else databases()[0]


def celery_app() -> Celery | None:
    """The Celery app named by ``PGCELERY_CELERY_APP`` (``None``: the current app)."""
    path = _setting("PGCELERY_CELERY_APP", None)
    if path is None:
        return None
    if not isinstance(path, str):
        raise _invalid("PGCELERY_CELERY_APP", path, "the dotted path of a Celery app")
    try:
        app = import_string(path.replace(":", "."))
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"PGCELERY_CELERY_APP is {path!r}, which cannot be imported ({exc}). "
            "Set it to the dotted path of your Celery app, e.g. 'proj.celery.app'."
        ) from exc
    if not isinstance(app, Celery):
        raise _invalid("PGCELERY_CELERY_APP", path, "the dotted path of a Celery app")
    return app


def batch_size() -> int:
    """How many notifications the bridge claims per round trip (whole chunks, at least one)."""
    return positive_int("PGCELERY_BATCH_SIZE", _setting("PGCELERY_BATCH_SIZE", 500))


def batch_bytes() -> int:
    """How many bytes of payload and context, as decoded text, the bridge claims per round
    trip (one row, whatever its size): its memory is bounded by this, not only by
    ``PGCELERY_BATCH_SIZE``."""
    return positive_int("PGCELERY_BATCH_BYTES", _setting("PGCELERY_BATCH_BYTES", 64 * 2**20))


def sweep_interval() -> float:
    """Seconds between sweeps of the outbox when no wake-up arrives."""
    return positive_seconds("PGCELERY_SWEEP_INTERVAL", _setting("PGCELERY_SWEEP_INTERVAL", 5.0))


def database_timeout() -> float:
    """Seconds one bridge transaction may take before its connection is given up as hung."""
    return positive_seconds("PGCELERY_DATABASE_TIMEOUT",
                            _setting("PGCELERY_DATABASE_TIMEOUT", 30.0))


def max_backoff() -> float:
    """Ceiling, in seconds, of the bridge's reconnect backoff."""
    return positive_seconds("PGCELERY_MAX_BACKOFF", _setting("PGCELERY_MAX_BACKOFF", 30.0))


def atomic_retention() -> datetime.timedelta:
    """How long ``atomic=True`` listeners remember the task ids they ran."""
    value = _setting("PGCELERY_ATOMIC_RETENTION", datetime.timedelta(days=7))
    if isinstance(value, datetime.timedelta):
        if value <= datetime.timedelta(0):
            raise _invalid("PGCELERY_ATOMIC_RETENTION", value, "a duration greater than 0")
        return value
    seconds = positive_seconds("PGCELERY_ATOMIC_RETENTION", value)
    return datetime.timedelta(seconds=seconds)


def redeliver_after() -> float | None:
    """The ``redeliver_after`` of listeners that do not set their own; None is off."""
    value = _setting("PGCELERY_REDELIVER_AFTER", None)
    return None if value is None else positive_seconds("PGCELERY_REDELIVER_AFTER", value)


def context_max_bytes() -> int:
    """The largest notification context, as JSON: it is copied into every notification of
    its transaction."""
    return positive_int("PGCELERY_CONTEXT_MAX_BYTES",
                        _setting("PGCELERY_CONTEXT_MAX_BYTES", 64 * 1024))


def role_names(name: str, value: Any) -> list[str] | None:
    """``value`` as a list of PostgreSQL role names, or None when unset."""
    if value is None:
        return None
    if (isinstance(value, str) or not isinstance(value, Sequence)
            or not all(isinstance(role, str) and role for role in value)):
        raise _invalid(name, value, "a list of role names, e.g. ['app']")
    return list(value)


def app_roles() -> list[str] | None:
    """The roles the project's web processes write as (not the migrations owner): with
    ``PGCELERY_WORKER_ROLES``, the only roles that may record notifications."""
    return role_names("PGCELERY_APP_ROLES", _setting("PGCELERY_APP_ROLES", None))


def worker_roles() -> list[str] | None:
    """The roles Celery workers connect as (not the migrations owner): the only roles that
    may keep the worker's records, once either setting is set."""
    return role_names("PGCELERY_WORKER_ROLES", _setting("PGCELERY_WORKER_ROLES", None))


def unknown_grace() -> datetime.timedelta:
    """How long rows of a channel or trigger the bridge does not know stay pending, for a
    bridge that knows them, before it fails them (0: at once)."""
    return seconds("PGCELERY_UNKNOWN_GRACE", _setting("PGCELERY_UNKNOWN_GRACE", 300))


def tcp_port(name: str, value: Any) -> int:
    """``value`` as a TCP port number to listen on."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _invalid(name, value, "a TCP port number from 1 to 65535")
    return value


def metrics_port() -> int | None:
    """The port the bridge serves ``/metrics`` and ``/health`` on; None (the default) is off."""
    value = _setting("PGCELERY_METRICS_PORT", None)
    return None if value is None else tcp_port("PGCELERY_METRICS_PORT", value)


def metrics_address() -> str:
    """The address the metrics are served on: this machine only, unless set."""
    value = _setting("PGCELERY_METRICS_ADDRESS", "127.0.0.1")
    if not isinstance(value, str) or not value:
        raise _invalid("PGCELERY_METRICS_ADDRESS", value,
                       "an IP address or host name to listen on, e.g. '0.0.0.0'")
    return value


def notification_filter() -> Q | None:
    """The notifications this bridge claims, by their context (``filters``); None: all."""
    return filters.from_setting(_setting(filters.SETTING, None))


#: How long a finished delivery of a ``redeliver_after`` listener is remembered, so that a
#: copy of its message still in a queue is skipped.
FINISHED_DELIVERY_RETENTION = datetime.timedelta(hours=1)


def check() -> None:
    """Reads every setting the bridge uses.

    Raises:
        ImproperlyConfigured: naming the first setting whose value is unusable.
    """
    databases()
    celery_app()
    batch_size()
    batch_bytes()
    sweep_interval()
    max_backoff()
    database_timeout()
    atomic_retention()
    redeliver_after()
    unknown_grace()
    context_max_bytes()
    app_roles()
    worker_roles()
    metrics_port()
    metrics_address()
    notification_filter()
