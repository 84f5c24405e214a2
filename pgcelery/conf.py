"""Every ``PGCELERY_*`` setting, read in one place, each with its default."""

from __future__ import annotations

import datetime

from django.conf import settings


def database() -> str:
    """The database alias the bridge drains and ``atomic`` listeners use by default."""
    return getattr(settings, "PGCELERY_DATABASE", "default")


def celery_app() -> str | None:
    """Dotted path of the Celery app the bridge publishes with (``None``: the current app)."""
    return getattr(settings, "PGCELERY_CELERY_APP", None)


def batch_size() -> int:
    """How many notifications the bridge claims per round trip (whole chunks, at least one)."""
    return int(getattr(settings, "PGCELERY_BATCH_SIZE", 500))


def sweep_interval() -> float:
    """Seconds between sweeps of the outbox when no wake-up arrives."""
    return float(getattr(settings, "PGCELERY_SWEEP_INTERVAL", 5.0))


def max_backoff() -> float:
    """Ceiling, in seconds, of the bridge's reconnect backoff."""
    return float(getattr(settings, "PGCELERY_MAX_BACKOFF", 30.0))


def atomic_retention() -> datetime.timedelta:
    """How long ``atomic=True`` listeners remember the task ids they ran."""
    value = getattr(settings, "PGCELERY_ATOMIC_RETENTION", datetime.timedelta(days=7))
    if isinstance(value, datetime.timedelta):
        return value
    return datetime.timedelta(seconds=float(value))
