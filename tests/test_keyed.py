"""Keyed listeners (``key``, ``ordered``, ``debounce``, ``concurrency``) through the real
bridge: in-process on the real database and broker, then as subprocesses with prefork workers
of concurrency 4, counting what the listeners ran."""

import collections
import json
import math
import os
import signal
import time

import pytest
from django.core.management import call_command
from django.db import connection

import pgcelery
from pgcelery import channels, keys, sql, worker
from pgcelery.models import Delivery, Notification, Waiting
from pgcelery.status import channel_status
from tests import support
from tests.testapp.channels import (
    KeyedBlocking,
    KeyedDebounced,
    KeyedDebouncedMax,
    KeyedInOrder,
    KeyedLimited,
)
from tests.testapp.models import Event, Ticket

IN_ORDER = "tests.testapp.listeners.keyed_in_order"
BLOCKING = "tests.testapp.listeners.keyed_blocking"
LIMITED = "tests.testapp.listeners.keyed_limited"


def published(listener):
    """(task id, payload) of the messages of ``listener`` taken off the queue, in order."""
    return [(message.headers["id"], json.loads(message.decode()[1]["_pgcelery"]["payload"]))
            for message in support.take_messages("celery") if message.headers["task"] == listener]


def keys_and_ns(messages):
    return [(payload.get("key", payload.get("new", {}).get("queue_number")), payload.get("n"))
            for _, payload in messages]


def finish_and_wake(bridge, task_id, channel):
    """Marks delivery ``task_id`` finished as a worker does, waking the bridges; returns the
    bridge's outbox once it has read the wake-up."""
    [outbox] = bridge.outboxes
    worker.finish_delivery("default", task_id, channels.pg_channel(channel.name()))

    def heard() -> bool:
        bridge._wait(outbox, 0.5)  # the notifications' own wake-ups may come first
        return task_id in outbox.freed

    support.wait_until(heard, 10, "the finish's wake-up")
    return outbox


def turn(bridge):
    """What one turn of the bridge does: claim what is pending, release what keys allow."""
    bridge.drain()
    [outbox] = bridge.outboxes
    bridge._release(outbox, full=True)


# -- in-process ------------------------------------------------------------------------------


@pytest.mark.connector
def test_keyed_notifications_wait_in_postgres_and_the_next_goes_when_one_finishes(bridge):
    for key, n in [(1, 1), (1, 2), (2, 1), (1, 3)]:
        pgcelery.notify(KeyedInOrder, key=key, n=n)
    turn(bridge)
    first = published(IN_ORDER)
    assert keys_and_ns(first) == [(1, 1), (2, 1)]
    assert Notification.objects.count() == 0 and Waiting.objects.count() == 2
    assert sorted(Delivery.objects.values_list("key", flat=True)) == [1, 2]
    [status] = [entry for entry in channel_status("default")
                if entry["channel"] == KeyedInOrder.name()]
    assert (status["pending"], status["waiting"]) == (0, 2)
    turn(bridge)
    assert published(IN_ORDER) == []  # both keys in flight
    worker.finish_delivery("default", first[0][0])
    turn(bridge)
    assert keys_and_ns(published(IN_ORDER)) == [(1, 2)]


@pytest.mark.connector
def test_concurrency_without_a_key_counts_all_the_listeners_deliveries_in_flight(bridge):
    for n in range(1, 5):
        pgcelery.notify(KeyedLimited, key=n, n=n)
    turn(bridge)
    first = published(LIMITED)
    assert keys_and_ns(first) == [(1, 1), (2, 2)]  # concurrency=2
    assert list(Delivery.objects.values_list("key", flat=True)) == [None, None]
    turn(bridge)
    assert published(LIMITED) == []
    worker.finish_delivery("default", first[0][0])
    turn(bridge)
    assert keys_and_ns(published(LIMITED)) == [(3, 3)]
    outbox = finish_and_wake(bridge, first[1][0], KeyedLimited)
    bridge._release(outbox, full=False)  # the release of the freed slot, by the SQL null key
    assert keys_and_ns(published(LIMITED)) == [(4, 4)]


@pytest.mark.connector
def test_a_worker_that_finishes_a_keyed_delivery_wakes_the_bridge(bridge):
    pgcelery.notify(KeyedInOrder, key=1, n=1)
    turn(bridge)
    [(task_id, _)] = published(IN_ORDER)
    outbox = finish_and_wake(bridge, task_id, KeyedInOrder)
    assert outbox.freed == {task_id}


@pytest.mark.connector
def test_a_finishs_wake_up_releases_the_next_of_its_key_and_no_other(bridge):
    for n in (1, 2):
        for key in (1, 2):
            pgcelery.notify(KeyedInOrder, key=key, n=n)
    turn(bridge)
    first = {payload["key"]: task_id for task_id, payload in published(IN_ORDER)}
    assert bridge.outboxes[0].release_gap == keys.RELEASE_GAP  # it published two
    worker.finish_delivery("default", first[2])  # marked, but with no wake-up
    outbox = finish_and_wake(bridge, first[1], KeyedInOrder)
    assert outbox.freed == {first[1]}
    bridge._release(outbox, full=False)
    assert keys_and_ns(published(IN_ORDER)) == [(1, 2)]
    bridge._release(outbox, full=True)
    assert keys_and_ns(published(IN_ORDER)) == [(2, 2)]


@pytest.mark.connector
def test_after_a_release_of_several_the_next_that_wake_ups_ask_waits_for_the_gap(bridge):
    for n in (1, 2):
        pgcelery.notify(KeyedInOrder, key=1, n=n)
    turn(bridge)
    [(task_id, _)] = published(IN_ORDER)
    outbox = finish_and_wake(bridge, task_id, KeyedInOrder)
    outbox.sweep_at = outbox.redeliver_at = outbox.release_at = math.inf
    assert outbox.release_gap == 0.0  # the last release published one delivery
    outbox.released_at = time.monotonic()  # as if a release of several had just begun
    outbox.release_gap = keys.RELEASE_GAP
    bridge._turn(outbox)
    assert published(IN_ORDER) == [] and outbox.freed == {task_id}
    assert outbox.next_turn() == outbox.released_at + keys.RELEASE_GAP
    outbox.released_at -= keys.RELEASE_GAP
    bridge._turn(outbox)
    assert keys_and_ns(published(IN_ORDER)) == [(1, 2)]
    assert outbox.release_gap == 0.0


@pytest.mark.connector
def test_a_release_that_finds_the_turn_taken_tries_again_soon_rather_than_wait(bridge):
    pgcelery.notify(KeyedInOrder, key=1, n=1)
    [outbox] = bridge.outboxes
    with connection.cursor() as cursor:  # another bridge releasing, or hung while it did
        cursor.execute("SELECT pg_advisory_lock(hashtext('pgcelery_release'))")
    try:
        turn(bridge)
        assert published(IN_ORDER) == [] and Waiting.objects.count() == 1
        assert outbox.release_gap == keys.RELEASE_GAP
        assert outbox.release_at <= time.monotonic() + keys.RELEASE_GAP
        bridge._release(outbox, full=True)
        assert outbox.release_gap == 2 * keys.RELEASE_GAP  # longer each time it is refused
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext('pgcelery_release'))")
    bridge._release(outbox, full=True)
    assert keys_and_ns(published(IN_ORDER)) == [(1, 1)] and outbox.release_gap == 0.0


@pytest.mark.connector
def test_block_holds_the_key_of_a_failed_delivery_until_it_is_discarded(bridge):
    with connection.cursor() as cursor:
        cursor.execute(sql.RECORD_FAILED_DELIVERY, [
            KeyedBlocking.name(), "", json.dumps({"key": 1, "n": 1, "hold": 0, "fail": True}),
            None, "ValueError: failed", BLOCKING, "failed-task-id", 1, 1, None])
    pgcelery.notify(KeyedBlocking, key=1, n=2)
    pgcelery.notify(KeyedBlocking, key=2, n=1)
    turn(bridge)
    assert keys_and_ns(published(BLOCKING)) == [(2, 1)]
    call_command("pgcelery_failed", "retry")
    turn(bridge)
    [(task_id, _)] = published(BLOCKING)
    assert task_id == "failed-task-id"
    with connection.cursor() as cursor:  # the retried run fails again
        cursor.execute(sql.RECORD_FAILED_DELIVERY, [
            KeyedBlocking.name(), "", json.dumps({"key": 1, "n": 1, "hold": 0, "fail": True}),
            None, "ValueError: failed", BLOCKING, task_id, 1, 1, None])
    worker.finish_delivery("default", task_id)
    turn(bridge)
    assert published(BLOCKING) == []
    call_command("pgcelery_failed", "discard")
    turn(bridge)
    assert keys_and_ns(published(BLOCKING)) == [(1, 2)]


@pytest.mark.connector
def test_a_trigger_listener_is_keyed_on_its_column_in_new(bridge):
    first = Ticket.objects.create(queue=7, state="open")
    Ticket.objects.create(queue=8, state="open")
    first.state = "closed"
    first.save()
    turn(bridge)
    sent = published("tests.testapp.listeners.ticket_saved")
    assert sorted(keys_and_ns(sent)) == [(7, None), (8, None)]
    assert [payload["new"]["state"] for _, payload in sent
            if payload["new"]["queue_number"] == 7] == ["open"]
    worker.finish_delivery("default", sent[0][0])
    worker.finish_delivery("default", sent[1][0])
    turn(bridge)
    [(_, closed)] = published("tests.testapp.listeners.ticket_saved")
    assert closed["new"]["state"] == "closed"


# -- the real bridge and workers -------------------------------------------------------------


def runs(listener):
    """{key: [(n, start, end)]} of the runs ``listener`` recorded, in start order; ``end`` is
    None for a run that never ended (its worker was killed)."""
    found = collections.defaultdict(list)
    going = {}
    for event in Event.objects.filter(listener=listener).order_by("id"):
        data = event.data
        run = (data["key"], data["n"], data["pid"], event.task_id)
        if data["phase"] == "start":
            found[data["key"]].append([data["n"], data["at"], None])
            going[run] = found[data["key"]][-1]
        else:
            going.pop(run)[2] = data["at"]
    return {key: sorted(map(tuple, each), key=lambda run: run[1]) for key, each in found.items()}


def most_at_once(spans):
    """The most runs of ``spans`` (start, end) going at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def one_at_a_time(runs):
    """Whether each of ``runs`` (n, start, end), in start order, started after the one
    before ended."""
    return all(later[1] >= earlier[2] for earlier, later in zip(runs, runs[1:], strict=False))


def ended(listener, count):
    return Event.objects.filter(listener=listener, data__phase="end").count() >= count


@pytest.fixture
def cleared(transactional_db):
    support.purge_queues()
    yield
    support.settle()


@pytest.mark.parametrize("bridges", [1, 2])
def test_keys_run_in_commit_order_one_at_a_time_and_in_parallel_with_each_other(
        spawn, cleared, bridges):
    for _ in range(bridges):
        spawn.bridge()
    spawn.worker(concurrency=4)
    for n in range(1, 11):
        for key in range(20):
            pgcelery.notify(KeyedInOrder, key=key, n=n, hold=0.02)
    support.wait_until(lambda: ended("keyed_in_order", 200), 180, "200 runs")
    found = runs("keyed_in_order")
    assert sorted(found) == list(range(20))
    for key, each in found.items():
        assert [n for n, _, _ in each] == list(range(1, 11)), key
        assert one_at_a_time(each), key
    assert most_at_once([(start, end) for each in found.values() for _, start, end in each]) > 1


def test_a_failed_notification_is_kept_and_its_key_goes_on(spawn, cleared):
    spawn.bridge()
    spawn.worker(concurrency=4)
    for n in (1, 2, 3):
        pgcelery.notify(KeyedInOrder, key=1, n=n, fail=n == 2)
    support.wait_until(lambda: ended("keyed_in_order", 3), 60, "3 runs")
    assert [n for n, _, _ in runs("keyed_in_order")[1]] == [1, 2, 3]
    support.wait_until(lambda: Notification.objects.filter(failed_at__isnull=False).exists())
    [failed] = Notification.objects.filter(failed_at__isnull=False)
    assert (failed.listener, failed.payload["n"]) == (IN_ORDER, 2)
    failed.delete()


def test_block_holds_the_key_until_the_failure_is_retried_or_discarded(spawn, cleared):
    spawn.bridge()
    spawn.worker(concurrency=4)
    for n in (1, 2, 3, 4):
        pgcelery.notify(KeyedBlocking, key=1, n=n, fail=n == 2)
    pgcelery.notify(KeyedBlocking, key=2, n=1)
    support.wait_until(lambda: Notification.objects.filter(failed_at__isnull=False).exists())
    [failed] = Notification.objects.filter(failed_at__isnull=False)
    call_command("pgcelery_failed", "retry", "--id", str(failed.pk))  # fails again: still held
    support.wait_until(lambda: len(runs("keyed_blocking")[1]) == 3
                       and Notification.objects.filter(failed_at__isnull=False).exists())
    assert [n for n, _, _ in runs("keyed_blocking")[1]] == [1, 2, 2]
    assert [n for n, _, _ in runs("keyed_blocking")[2]] == [1]
    [failed] = Notification.objects.filter(failed_at__isnull=False)
    call_command("pgcelery_failed", "discard", "--id", str(failed.pk))
    support.wait_until(lambda: ended("keyed_blocking", 6), 60, "6 runs")
    assert [n for n, _, _ in runs("keyed_blocking")[1]] == [1, 2, 2, 3, 4]


def test_a_burst_of_one_key_under_debounce_runs_once_or_twice_ending_with_the_last(
        spawn, cleared):
    spawn.bridge()
    spawn.worker(concurrency=4)
    started = time.monotonic()
    for n in range(1, 51):
        pgcelery.notify(KeyedDebounced, key=1, n=n)
    assert time.monotonic() - started < 0.5, "the burst took longer than the test needs"
    support.wait_until(lambda: ended("keyed_debounced", 1) and support.waiting() == 0)
    support.settle()
    found = runs("keyed_debounced")[1]
    assert 1 <= len(found) <= 2 and found[-1][0] == 50


def test_debounce_max_publishes_a_steady_stream_at_its_bound(spawn, cleared):
    spawn.bridge()
    spawn.worker(concurrency=4)
    for n in range(1, 16):  # every 0.4 s for 6 s: never quiet for the 1 s debounce
        pgcelery.notify(KeyedDebouncedMax, key=1, n=n)
        time.sleep(0.4)
    support.wait_until(lambda: support.waiting() == 0)
    support.settle()
    found = [n for n, _, _ in runs("keyed_debounced_max")[1]]
    assert len(found) >= 2 and found[-1] == 15 and found == sorted(found)


def test_concurrency_never_has_more_runs_at_once_across_workers(spawn, cleared):
    spawn.bridge()
    spawn.worker(concurrency=4, name="first")
    spawn.worker(concurrency=4, name="second")
    for n in range(1, 13):
        pgcelery.notify(KeyedLimited, key=n, n=n, hold=0.3)
    support.wait_until(lambda: ended("keyed_limited", 12), 120, "12 runs")
    found = [run for each in runs("keyed_limited").values() for run in each]
    assert len(found) == 12
    assert most_at_once([(start, end) for _, start, end in found]) == 2


@pytest.mark.faults
def test_a_worker_killed_mid_task_frees_its_key_after_redeliver_after(spawn, cleared):
    spawn.bridge()
    first = spawn.worker(concurrency=4, name="killed")
    pgcelery.notify(KeyedInOrder, key=9, n=1, hold=3.0)
    pgcelery.notify(KeyedInOrder, key=9, n=2)
    pgcelery.notify(KeyedInOrder, key=9, n=3)
    support.wait_until(lambda: Event.objects.filter(listener="keyed_in_order").exists())
    os.killpg(first.popen.pid, signal.SIGKILL)
    first.stop()
    spawn.worker(concurrency=4, name="after")
    support.wait_until(lambda: ended("keyed_in_order", 3), 90, "3 runs")
    found = runs("keyed_in_order")[9]
    assert [n for n, _, end in found if end is not None] == [1, 2, 3]
    finished = [run for run in found if run[2] is not None]
    assert one_at_a_time(finished)


def test_a_bridge_restarted_with_keys_waiting_goes_on_in_order(spawn, cleared):
    bridge = spawn.bridge()
    spawn.worker(concurrency=4)
    for n in range(1, 7):
        pgcelery.notify(KeyedInOrder, key=5, n=n, hold=0.3)
    support.wait_until(lambda: ended("keyed_in_order", 1))
    assert bridge.stop() == 0
    assert support.waiting() > 0
    spawn.bridge()
    support.wait_until(lambda: ended("keyed_in_order", 6), 60, "6 runs")
    support.settle()
    found = runs("keyed_in_order")[5]
    assert [n for n, _, _ in found] == [1, 2, 3, 4, 5, 6]
    assert one_at_a_time(found)
