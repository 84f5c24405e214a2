"""A user module of the public API, for the type checker (``make lint``): what a project writes.

Not collected by pytest; ``mypy`` checks that the decorators keep the Celery task's type and
that ``notify`` and the channel bases are typed as documented.
"""

from __future__ import annotations

import dataclasses
import datetime

from celery import Task, shared_task

import pgcelery


@dataclasses.dataclass
class Reads(pgcelery.Channel):
    model_id: int
    date: datetime.date


@pgcelery.listener(Reads, queue="stats")
@shared_task(bind=True)
def count_reads(self: Task, model_id: int, date: datetime.date) -> int:
    return model_id


def record(model_id: int) -> None:
    pgcelery.notify(Reads, model_id=model_id, date=datetime.date.today())
    pgcelery.notify("tests.typed_usage.Reads", using="default", model_id=model_id,
                    date=datetime.date.today())
    result = count_reads.delay(model_id, datetime.date.today())
    result.get(timeout=1)
    count_reads.apply_async(kwargs={"model_id": model_id}, queue="stats", countdown=1)


@pgcelery.listener("tests.typed_usage.Reads", atomic=True)
def plain(model_id: int, date: datetime.date) -> None:
    """A plain function: the decorator makes it a Celery task."""


def send_plain() -> None:
    plain.delay(1, datetime.date.today())
    plain(2, datetime.date.today())
