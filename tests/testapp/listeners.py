"""Listeners that record what they received as Event rows."""

import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pgtrigger
from celery import current_task, shared_task
from celery.exceptions import Reject
from celery.signals import task_postrun
from django.db import connection

import pgcelery
from pgcelery.messages import ENVELOPE
from tests.testapp.channels import (
    AccountChannel,
    AccountNameChannel,
    AtomicTally,
    Broadcasted,
    Counted,
    Everything,
    FailingTally,
    Flaky,
    HardLimited,
    Kept,
    KeptTally,
    KeyedBatched,
    KeyedBlocking,
    KeyedDebounced,
    KeyedDebouncedMax,
    KeyedInOrder,
    KeyedLimited,
    LegacyChannel,
    Limited,
    Lingering,
    Message,
    Outcome,
    Ping,
    ReadingChannel,
    Reads,
    Rejected,
    RestaurantChannel,
    Routed,
    SampleChannel,
    SkuChannel,
    Slow,
    SpanChannel,
    Tally,
    TicketChannel,
    WithContext,
    WriterChannel,
)
from tests.testapp.models import Event


def record(listener: str, **data: Any) -> None:
    Event.objects.create(listener=listener, data=data, task_id=current_task.request.id)


def summary(value) -> dict:
    """Type and repr of a value, sets in sorted order so the repr does not depend on hashing."""
    shown = sorted(value) if isinstance(value, set) else value
    return {"repr": repr(shown), "type": type(value).__name__}


def described(instance) -> dict | None:
    """The instance as the test compares it: type, saved state and repr of every field it
    holds (a deferred one would be loaded from the database)."""
    if instance is None:
        return None
    deferred = instance.get_deferred_fields()
    return {
        "type": type(instance).__name__,
        "adding": instance._state.adding,
        "fields": {f.attname: repr(getattr(instance, f.attname))
                   for f in instance._meta.concrete_fields if f.attname not in deferred},
    }


def record_rows(listener: str, old, new) -> None:
    record(listener, old=described(old), new=described(new))


@pgcelery.post_insert_listener(WriterChannel)
def writer_inserted(old, new):
    record_rows("writer_inserted", old, new)


@pgcelery.post_update_listener(WriterChannel, condition=pgtrigger.AnyChange("name"))
def writer_renamed(old, new):
    record_rows("writer_renamed", old, new)


@pgcelery.pre_delete_listener(WriterChannel)
def writer_deleting(old, new):
    record_rows("writer_deleting", old, new)


# django-pgpubsub's form: a pgtrigger Trigger, whose when, operation and condition are taken.
@pgcelery.trigger_listener("tests.testapp.channels.WriterChannel",
                           pgtrigger.Trigger(name="writer_deleted", when=pgtrigger.After,
                                             operation=pgtrigger.Delete))
def writer_deleted(old, new):
    record_rows("writer_deleted", old, new)


@pgcelery.pre_save_listener(SkuChannel)
def sku_saving(old, new):
    record_rows("sku_saving", old, new)


@pgcelery.post_save_listener(LegacyChannel)
def legacy_saved(old, new):
    record_rows("legacy_saved", old, new)


@pgcelery.trigger_listener(RestaurantChannel, when=pgtrigger.After, operation=pgtrigger.Insert)
def restaurant_inserted(old, new):
    record_rows("restaurant_inserted", old, new)


@pgcelery.post_insert_listener(SampleChannel)
def sample_inserted(old, new):
    record_rows("sample_inserted", old, new)


@pgcelery.listener(Message)
def message_received(text: str):
    record("message_received", text=text)


@pgcelery.listener(Everything)
def everything_received(**fields):
    record("everything_received", **{
        name: summary(value) for name, value in fields.items() if name != "context"
    })


@pgcelery.listener(Routed, queue="tests.routed", priority=7, countdown=1, expires=600)
@shared_task(bind=True)
def routed(self, n: int):
    record("routed", n=n, queue=self.request.delivery_info.get("routing_key"))


@pgcelery.listener(WithContext)
def with_context(n: int, context: dict):
    record("with_context", n=n, context=context)


@pgcelery.listener(WithContext)
def without_context(n: int):
    record("without_context", n=n)


@pgcelery.listener(Counted, atomic=True)
def count_once(n: int, fail: bool, hold: float) -> int:
    """Records its run; ``fail`` raises until an ``allow`` event exists; ``hold`` keeps the
    transaction open that long."""
    record("count_once", n=n)
    time.sleep(hold)
    if fail and not Event.objects.filter(listener="allow").exists():
        raise RuntimeError("failing as asked")
    return n


@task_postrun.connect
def crash_after_commit(sender=None, kwargs=None, **_):
    """Kills the worker process once, after a ``crash=True`` count_once committed, before its ack.

    Armed by PGCELERY_TEST_CRASH_MARKER, the file that records the crash happened.
    """
    marker = os.environ.get("PGCELERY_TEST_CRASH_MARKER")
    envelope = (kwargs or {}).get(ENVELOPE)
    if sender is None or sender.name != count_once.name or not marker or not envelope:
        return
    if json.loads(envelope["payload"]).get("crash") and not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


@pgcelery.listener(Slow)
def slow(n: int, hold: float):
    """Records its start with the pid running it, then takes ``hold`` seconds."""
    record("slow_started", n=n, pid=os.getpid())
    time.sleep(hold)
    record("slow_done", n=n)


@pgcelery.listener(Flaky)
@shared_task(bind=True, autoretry_for=(RuntimeError,), max_retries=2, default_retry_delay=0)
def flaky(self, failures: int):
    """Fails its first ``failures`` attempts; Celery retries it up to twice."""
    record("flaky_attempt", attempt=self.request.retries)
    if self.request.retries < failures:
        raise RuntimeError(f"attempt {self.request.retries} fails")
    record("flaky_done", attempt=self.request.retries)


@pgcelery.listener(Ping)
def ping(n: int):
    """Records the PostgreSQL backend that served it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        record("ping", n=n, backend=cursor.fetchone()[0])


@pgcelery.listener(Outcome)
def outcome_ok(n: int):
    record("outcome_ok", n=n)


@pgcelery.listener(Outcome)
def outcome_fails(n: int):
    """Fails until an ``allow`` event exists, with no retry configured."""
    record("outcome_attempt", n=n)
    if not Event.objects.filter(listener="allow").exists():
        raise RuntimeError("failing until allowed")
    record("outcome_fixed", n=n)


@pgcelery.listener(Limited)
@shared_task(soft_time_limit=1)
def limited(hold: float):
    """Runs past its soft time limit when ``hold`` is longer."""
    record("limited_started")
    time.sleep(hold)


@pgcelery.listener(HardLimited)
@shared_task(time_limit=1)
def limited_hard(hold: float):
    """Runs past its hard time limit when ``hold`` is longer: its process is killed."""
    record("limited_hard_started")
    time.sleep(hold)


@pgcelery.listener(Rejected)
def rejected(n: int):
    """Rejects its message without requeueing it."""
    record("rejected", n=n)
    raise Reject("not for this worker", requeue=False)


@pgcelery.listener(Kept, redeliver_after=3)
def kept_redelivered(n: int):
    record("kept_redelivered", n=n)


@pgcelery.listener(Kept)
def kept_plain(n: int):
    record("kept_plain", n=n)


@pgcelery.listener(Lingering, atomic=True, redeliver_after=2)
def lingering(n: int, hold: float):
    """Runs longer than its ``redeliver_after``, in one transaction."""
    record("lingering", n=n)
    time.sleep(hold)


def record_deferred(listener: str, old, new) -> None:
    record(listener, old=described(old), new=described(new),
           deferred=sorted(new.get_deferred_fields()) if new is not None else None)


@pgcelery.post_insert_listener(AccountChannel)
def account_created(old, new):
    record_deferred("account_created", old, new)


@pgcelery.post_update_listener(AccountChannel)
def account_updated(old, new):
    record_deferred("account_updated", old, new)


@pgcelery.post_insert_listener(AccountNameChannel)
def account_named(old, new):
    record_deferred("account_named", old, new)


def kinds(notifications) -> list[str]:
    """The distinct types in a batch: each notification's, and its fields' values'."""
    return sorted({
        f"{type(item).__name__}(" + ", ".join(
            f"{field.name}: {type(getattr(item, field.name)).__name__}"
            for field in dataclasses.fields(item)) + ")"
        for item in notifications
    })


@pgcelery.post_insert_listener(ReadingChannel, batch=100)
def readings_batched(notifications):
    record("readings_batched", ns=[item.new.n for item in notifications],
           kinds=kinds(notifications),
           values=sorted({type(item.new.value).__name__ for item in notifications}),
           contexts=[item.context for item in notifications])


@pgcelery.listener(Tally, batch=50)
def tallies_batched(notifications):
    record("tallies_batched", ns=[item.n for item in notifications], kinds=kinds(notifications))


@pgcelery.listener(AtomicTally, batch=10, atomic=True)
def atomic_tallies(notifications):
    """One event per notification, committed with the batch's task ids."""
    for item in notifications:
        record("atomic_tallies", n=item.n)


@pgcelery.listener(FailingTally, batch=10)
def failing_tallies(notifications):
    """Fails until an event 'failing_tallies_fixed' exists."""
    if not Event.objects.filter(listener="failing_tallies_fixed").exists():
        raise RuntimeError(f"batch of {len(notifications)} fails")
    record("failing_tallies", ns=[item.n for item in notifications])


@pgcelery.listener(KeptTally, batch=20, redeliver_after=3)
def kept_tallies(notifications):
    record("kept_tallies", ns=[item.n for item in notifications])


@pgcelery.listener(Broadcasted, queue="tests.broadcast")
def broadcast_received(n: int):
    record("broadcast_received", n=n, worker=current_task.request.hostname)


@pgcelery.listener(Reads)
def reads_counted(model_id: int, model_type: str, date, tags, context):
    record("reads_counted", model_id=model_id, date=str(date), tags=list(tags), context=context)


def range_of(value) -> list | str | None:
    if value is None:
        return None
    if value.isempty:
        return "empty"
    return [str(value.lower), str(value.upper), value.lower_inc, value.upper_inc]


@pgcelery.post_insert_listener(SpanChannel)
def span_inserted(old, new):
    record("span_inserted", days=range_of(new.days), times=range_of(new.times),
           amount=str(new.amount), counts=new.counts)


def keyed_run(listener: str, key: int, n: int, hold: float, fail: bool) -> None:
    """Records the run's start and end (wall clock, shared by the workers of one machine),
    holding ``hold`` seconds between them; raises after its end if ``fail``."""
    record(listener, key=key, n=n, phase="start", at=time.time(), pid=os.getpid())
    time.sleep(hold)
    record(listener, key=key, n=n, phase="end", at=time.time(), pid=os.getpid())
    if fail:
        raise ValueError(f"notification {n} of key {key} fails, as asked")


@pgcelery.listener(KeyedInOrder, key="key", ordered=True, redeliver_after=5)
def keyed_in_order(key: int, n: int, hold: float, fail: bool):
    keyed_run("keyed_in_order", key, n, hold, fail)


@pgcelery.listener(KeyedBlocking, key="key", ordered="block")
def keyed_blocking(key: int, n: int, hold: float, fail: bool):
    keyed_run("keyed_blocking", key, n, hold, fail)


@pgcelery.listener(KeyedDebounced, key="key", debounce=1.0)
def keyed_debounced(key: int, n: int, hold: float, fail: bool):
    keyed_run("keyed_debounced", key, n, hold, fail)


@pgcelery.listener(KeyedDebouncedMax, key="key", debounce=1.0, debounce_max=2.0)
def keyed_debounced_max(key: int, n: int, hold: float, fail: bool):
    keyed_run("keyed_debounced_max", key, n, hold, fail)


@pgcelery.listener(KeyedLimited, concurrency=2)
def keyed_limited(key: int, n: int, hold: float, fail: bool):
    keyed_run("keyed_limited", key, n, hold, fail)


@pgcelery.listener(KeyedBatched, key="key", ordered=True, batch=3)
def keyed_batched(notifications):
    record("keyed_batched", key=notifications[0].key, ns=[item.n for item in notifications])


@pgcelery.post_save_listener(TicketChannel, key="queue", ordered=True)
def ticket_saved(old, new):
    """Keyed on a column named apart from its field (``queue_number``)."""
    record("ticket_saved", queue=new.queue, state=new.state, at=time.time())
