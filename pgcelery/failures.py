"""Failed notifications: retried or discarded from the admin or ``manage.py pgcelery_failed``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from django.db import connections, transaction
from django.db.models import QuerySet

from pgcelery import channels, sql
from pgcelery.models import Notification


def failed(database: str, *, channel: str | None = None,
           ids: Iterable[int] | None = None) -> QuerySet[Notification]:
    """The failed notifications of ``database``, optionally of one channel or with given ids."""
    queryset = Notification.objects.using(database).filter(failed_at__isnull=False)
    if channel is not None:
        queryset = queryset.filter(channel=channel)
    if ids is not None:
        queryset = queryset.filter(pk__in=list(ids))
    return queryset.order_by("id")


def retry(queryset: QuerySet[Notification]) -> int:
    """Puts failed notifications back in the queue and wakes the bridges; returns how many."""
    with _waking(queryset):
        return queryset.filter(failed_at__isnull=False).update(failed_at=None, failure=None)


def discard(queryset: QuerySet[Notification]) -> int:
    """Deletes failed notifications for good and wakes the bridges (a failed delivery of an
    ``ordered="block"`` listener held its key); returns how many."""
    with _waking(queryset):
        count, _ = queryset.filter(failed_at__isnull=False).delete()
        return count


@contextlib.contextmanager
def _waking(queryset: QuerySet[Notification]) -> Iterator[None]:
    """Runs the block in a transaction that wakes the bridges of the queryset's channels at
    its commit."""
    database = queryset.db
    with transaction.atomic(using=database):
        names = set(queryset.values_list("channel", flat=True))
        yield
        with connections[database].cursor() as cursor:
            for name in names:
                cursor.execute(sql.WAKE, [channels.pg_channel(name)])
