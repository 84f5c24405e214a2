"""Batch listeners (``batch=N``): many notifications in one task, each exactly once."""

import datetime
import decimal
import json
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

import pgcelery
from pgcelery import failures, messages, registry
from pgcelery.messages import ENVELOPE
from pgcelery.models import Notification
from tests import support
from tests.testapp.channels import AtomicTally, FailingTally, Tally
from tests.testapp.listeners import atomic_tallies, failing_tallies
from tests.testapp.models import Event, Reading

TALLY = "tests.testapp.channels.Tally"


def notify_tallies(count):
    with transaction.atomic():
        for n in range(count):
            pgcelery.notify(Tally, n=n, day=datetime.date(2026, 1, 1))


# -- through the real bridge and worker ------------------------------------------------------


@pytest.mark.usefixtures("running")
def test_a_bulk_insert_reaches_a_batch_listener_in_batches_in_commit_order():
    with transaction.atomic():
        pgcelery.set_notification_context({"request": "bulk"})
        Reading.objects.bulk_create(
            Reading(n=n, value=decimal.Decimal(n) / 1000) for n in range(1000))
    support.wait_for_batches("readings_batched", 1000)
    support.settle()

    runs = support.batch_runs("readings_batched")
    numbers = [n for _, ns in runs for n in ns]
    assert sorted(numbers) == list(range(1000))  # every row once
    assert all(0 < len(ns) <= 100 and ns == sorted(ns) for _, ns in runs)
    assert len(runs) <= 20  # far fewer tasks than rows: 10 when each claim takes 500
    assert len({task_id for task_id, _ in runs}) == len(runs)
    events = Event.objects.filter(listener="readings_batched")
    assert {json.dumps(event.data["kinds"]) for event in events} == {json.dumps(
        ["ReadingChannel(old: NoneType, new: Reading, context: dict)"])}
    assert {tuple(event.data["values"]) for event in events} == {("Decimal",)}
    assert all(context == {"request": "bulk"}
               for event in events for context in event.data["contexts"])
    assert not Notification.objects.exists()


@pytest.mark.usefixtures("running")
def test_a_channel_batch_holds_dataclasses_with_typed_fields():
    notify_tallies(120)
    support.wait_for_batches("tallies_batched", 120)
    support.settle()

    runs = support.batch_runs("tallies_batched")
    assert sorted(n for _, ns in runs for n in ns) == list(range(120))
    assert all(0 < len(ns) <= 50 and ns == sorted(ns) for _, ns in runs)
    assert {tuple(event.data["kinds"]) for event in Event.objects.filter(
        listener="tallies_batched")} == {("Tally(n: int, day: date)",)}


@pytest.mark.usefixtures("running")
def test_a_failing_batch_is_one_failed_delivery_whose_retry_sends_the_same_batch():
    with transaction.atomic():
        for n in range(7):
            pgcelery.notify(FailingTally, n=n)
    support.wait_until(lambda: Notification.objects.filter(failed_at__isnull=False).exists(),
                       what="the failed delivery")
    support.settle()
    [failed] = Notification.objects.filter(failed_at__isnull=False)
    assert (failed.listener, failed.side, failed.size) == (failing_tallies.name, "batch", 7)
    assert failed.failure == "RuntimeError: batch of 7 fails"
    assert [item["payload"] for item in failed.payload] == [{"n": n} for n in range(7)]
    status = json.loads(support.manage("pgcelery_status", "--json").stdout)
    assert status["channels"][0]["failed"] == 1

    Event.objects.create(listener="failing_tallies_fixed", data={})
    assert failures.retry(failures.failed("default", ids=[failed.id])) == 1
    support.wait_for_batches("failing_tallies", 7)
    support.settle()
    assert support.batch_runs("failing_tallies") == [(failed.task_id, list(range(7)))]
    assert not Notification.objects.exists()


# -- the pieces, in-process -------------------------------------------------------------------


def tally_rows(ns, channel="tests.testapp.channels.AtomicTally"):
    return [messages.Row(n, 0, uuid.UUID(int=n + 1), channel, "", json.dumps({"n": n}), None)
            for n in ns]


def run_batch(rows, task_id):
    listener = registry.find("tests.testapp.channels.AtomicTally", "", atomic_tallies.name)
    delivery = messages.Delivery(listener, task_id, rows)
    return atomic_tallies.apply(kwargs={ENVELOPE: delivery.envelope("default")},
                                task_id=task_id)


def atomic_runs():
    return sorted(Event.objects.filter(listener="atomic_tallies").values_list("data__n",
                                                                              flat=True))


@pytest.mark.django_db(transaction=True)
def test_an_atomic_batch_delivered_twice_takes_effect_once():
    rows = tally_rows(range(10))
    assert run_batch(rows, "batch-1").successful()
    assert run_batch(rows, "batch-1").state == "IGNORED"  # a no-op
    assert atomic_runs() == list(range(10))
    # The same notifications in another batch (a crashed bridge's, claimed with newer ones)
    # run only the new ones.
    assert run_batch(tally_rows(range(5, 13)), "batch-2").successful()
    assert atomic_runs() == list(range(13))


@pytest.mark.django_db(transaction=True)
def test_a_batch_task_id_derives_from_its_notifications():
    listener = registry.find(TALLY, "", "tests.testapp.listeners.tallies_batched")
    rows = tally_rows(range(5), TALLY)
    same = messages.Delivery.of(listener, tally_rows(range(5), TALLY))
    assert messages.Delivery.of(listener, rows).task_id == same.task_id
    assert messages.Delivery.of(listener, rows[:4]).task_id != same.task_id
    kept = rows[0]._replace(task_id="kept-id")
    assert messages.Delivery.of(listener, [kept, *rows[1:]]).task_id == "kept-id"


def test_batch_must_be_a_positive_integer():
    with pytest.raises(ImproperlyConfigured, match="batch must be an integer of at least 1"):
        pgcelery.listener(Tally, batch=0)


def test_a_batch_listener_must_take_notifications():
    with pytest.raises(TypeError, match="one argument `notifications`"):
        @pgcelery.listener(AtomicTally, batch=5)
        def takes_fields(n: int):
            pass
