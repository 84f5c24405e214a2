"""Listeners run in the test's own process: no bridge, broker or worker.

The notifications are claimed from the outbox through the test's own database connection,
so those a ``TestCase`` has not committed are seen too; they are dispatched by the bridge's
rules (one task per listener, ``batch=`` batches, the notification context) and each task
runs eagerly, with Celery's ``apply``: retries, ``atomic=True`` and the listener's own
signature work as in a worker. A listener that records notifications in turn has them
delivered too, as the bridge would.

Example:
    >>> with pgcelery.testing.deliver():
    ...     Order.objects.create(customer="ada@example.com", total=1)
    >>> assert Email.objects.count() == 1
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from pgcelery import conf, dispatch, messages, publish, registry, sql, worker
from pgcelery.store import Scope, delete_parameters, fail_parameters

__all__ = ["UndeliverableNotification", "deliver", "deliver_pending"]

#: Rows of channels no listener is known for are failed at once: a test has no rolling
#: deploy to wait for (the bridge waits ``PGCELERY_UNKNOWN_GRACE``).
_NO_GRACE = datetime.timedelta(days=-1)


class UndeliverableNotification(Exception):
    """A notification that no listener can take: the bridge would keep it as failed."""


@contextlib.contextmanager
def deliver(using: str | None = None, *, propagate: bool = True) -> Iterator[None]:
    """On leaving the block, delivers every notification recorded inside it.

    Args:
        using: The database alias; Django's default database when None.
        propagate: Raise a listener's exception out of the block (the first, after every
            delivery ran). With False, it is recorded as a failed delivery instead, as a
            worker records it.

    Raises:
        UndeliverableNotification: if a notification can go to no listener (with
            ``propagate``); it is kept as failed, as the bridge keeps it.
    """
    alias = using or DEFAULT_DB_ALIAS
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT coalesce(max(id), 0) FROM {sql.OUTBOX}")
        last = int(cursor.fetchone()[0])
    yield
    _deliver(alias, propagate, f"id > {last}")


def deliver_pending(using: str | None = None, *, propagate: bool = True) -> int:
    """Delivers every notification pending on the database (as this connection sees it), as
    ``deliver`` does.

    Returns:
        How many notifications were delivered.
    """
    return _deliver(using or DEFAULT_DB_ALIAS, propagate, "true")


def _deliver(alias: str, propagate: bool, where: str) -> int:
    delivered = 0
    errors: list[BaseException] = []
    while True:
        deliveries, failed = _claim(alias, where)
        if not deliveries and not failed:
            break
        delivered += len({(row.id, row.position) for found in deliveries for row in found.rows})
        for delivery in deliveries:
            error = _run(delivery, alias, propagate)
            if error is not None:
                errors.append(error)
        if failed and propagate:
            errors.append(UndeliverableNotification(
                "; ".join(f"notification {row_id}: {reason}" for row_id, _, reason in failed)))
    if errors:
        raise errors[0]
    return delivered


def _claim(alias: str, where: str) -> tuple[list[messages.Delivery], list[dispatch.Failure]]:
    """Takes one claim's notifications out of the outbox, as the bridge does."""
    scope = Scope.of(registry.registered_listeners(), None, _NO_GRACE)
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(sql.claim(where),
                       scope.claim_parameters(conf.batch_size(), conf.batch_bytes()))
        rows = messages.claimed(cursor.fetchall())
        failed: list[dispatch.Failure] = []
        deliveries = dispatch.deliveries(rows, failed)
        if failed:
            cursor.execute(sql.FAIL, fail_parameters(failed))
        if rows:
            cursor.execute(sql.DELETE, delete_parameters(row.id for row in rows))
    return deliveries, failed


def _run(delivery: messages.Delivery, alias: str, propagate: bool) -> BaseException | None:
    """Runs the delivery's task eagerly; returns its exception where it is to be raised."""
    task = publish.celery_app().tasks[delivery.listener.task_name]
    with worker.failures_recorded(not propagate):
        result = task.apply(kwargs={messages.ENVELOPE: delivery.envelope(alias)},
                            task_id=delivery.task_id, throw=False)
    if propagate and result.failed():
        return result.result
    return None
