"""Failed notifications: retried or discarded from the admin or ``manage.py pgcelery_failed``."""

from __future__ import annotations

from collections.abc import Iterable

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
    database = queryset.db
    with transaction.atomic(using=database):
        names = set(queryset.values_list("channel", flat=True))
        count = queryset.filter(failed_at__isnull=False).update(failed_at=None, failure=None)
        with connections[database].cursor() as cursor:
            for name in names:
                cursor.execute(sql.WAKE, [channels.pg_channel(name)])
    return count


def discard(queryset: QuerySet[Notification]) -> int:
    """Deletes failed notifications for good; returns how many."""
    count, _ = queryset.filter(failed_at__isnull=False).delete()
    return count
