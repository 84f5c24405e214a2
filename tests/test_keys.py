"""Keyed listeners: their options, the release rules, and the bridge parking and releasing
their notifications on an outbox in memory (no database, kombu's in-memory transport)."""

import json
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured

import pgcelery
from pgcelery import keys, messages, registry
from tests import support
from tests.testapp.channels import KeyedInOrder, Message, TicketChannel

pytestmark = pytest.mark.unit

IN_ORDER = "tests.testapp.listeners.keyed_in_order"
BLOCKING = "tests.testapp.listeners.keyed_blocking"
DEBOUNCED = "tests.testapp.listeners.keyed_debounced"
LIMITED = "tests.testapp.listeners.keyed_limited"
BATCHED = "tests.testapp.listeners.keyed_batched"


def listener_of(task_name):
    [found] = [each for each in registry.registered_listeners() if each.task_name == task_name]
    return found


def keyed(row_id, key, n, channel="tests.testapp.channels.KeyedInOrder"):
    return messages.Row(row_id, 0, uuid.UUID(int=row_id), channel, "",
                        json.dumps({"key": key, "n": n, "hold": 0.0, "fail": False}), None)


def waiting(*entries, age=0.0):
    """Waiting entries of (key, n), in commit order, ``age`` seconds old each unless given."""
    found = []
    for number, entry in enumerate(entries, 1):
        key, n, *when = entry
        found.append(keys.Waiting(number, json.dumps(key), keyed(number, key, n)._replace(
            age=when[0] if when else age)))
    return found


def ns(released):
    return [[json.loads(row.payload)["n"] for row in delivery.rows]
            for delivery in released.deliveries]


def keys_of(released):
    return [json.loads(delivery.row.payload)["key"] for delivery in released.deliveries]


# -- options ---------------------------------------------------------------------------------


def test_the_options_are_read_into_the_listener():
    found = listener_of(IN_ORDER).keys
    assert (found.field, found.name, found.of_rows, found.ordered, found.limit) == (
        "key", "key", False, True, 1)
    assert listener_of(DEBOUNCED).keys.debounce_max == 10.0  # ten debounce periods
    assert listener_of(LIMITED).keys.field is None and listener_of(LIMITED).keys.limit == 2


def test_a_trigger_channel_key_is_read_from_its_column():
    ticket = listener_of("tests.testapp.listeners.ticket_saved").keys
    assert (ticket.name, ticket.of_rows) == ("queue_number", True)
    assert keys.of(TicketChannel, {"key": "pk", "ordered": True}).name == "id"


def test_keyed_listeners_always_have_a_redelivery_period():
    assert listener_of(BLOCKING).redelivery_period() == registry.KEYED_REDELIVER_AFTER
    assert listener_of(IN_ORDER).redelivery_period() == 5


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"ordered": True}, TypeError, "with key="),
    ({"debounce": 1}, TypeError, "with key="),
    ({"key": "key"}, TypeError, "give one of them"),
    ({"key": "nope", "ordered": True}, TypeError, "not a field of the channel"),
    ({"key": "key", "ordered": "yes"}, TypeError, "takes True, False or 'block'"),
    ({"key": "key", "debounce_max": 5}, TypeError, "give debounce="),
    ({"key": "key", "debounce": 2, "debounce_max": 1}, TypeError, "at least as long"),
    ({"key": "key", "ordered": True, "concurrency": 3}, TypeError, "cannot apply"),
    ({"key": "key", "debounce": 0}, ImproperlyConfigured, "greater than 0"),
    ({"concurrency": 0}, ImproperlyConfigured, "at least 1"),
    ({"key": "key", "ordered": True, "redeliver_after": None}, TypeError, "need redeliver_after"),
])
def test_options_that_cannot_work_are_refused_at_the_decorator(options, error, words):
    with pytest.raises(error, match=words):
        pgcelery.listener(KeyedInOrder, **options)


def test_a_trigger_key_must_be_a_field_of_the_model():
    with pytest.raises(TypeError, match="not a field of testapp.Ticket"):
        pgcelery.post_insert_listener(TicketChannel, key="queue_number", ordered=True)
    with pytest.raises(TypeError, match="not a field of the channel"):
        pgcelery.listener(Message, key="title", concurrency=1)


# -- release rules ---------------------------------------------------------------------------


def test_ordered_releases_the_first_of_each_free_key_in_commit_order():
    entries = [entry._replace(in_flight=int(entry.key == "2"))
               for entry in waiting((1, 1), (1, 2), (2, 1), (3, 1), (3, 2))]
    released = keys.release(listener_of(IN_ORDER), entries)
    assert ns(released) == [[1], [1]]
    assert keys_of(released) == [1, 3]
    assert released.done == [1, 4]


def test_block_holds_a_key_with_a_failed_delivery():
    entries = waiting((1, 1), (2, 1))
    released = keys.release(listener_of(BLOCKING), entries, {json.dumps(1)})
    assert keys_of(released) == [2]


def test_concurrency_fills_the_free_slots_of_the_listener():
    listener = listener_of(LIMITED)
    def entries(in_flight):
        return [keys.Waiting(n, None, keyed(n, 0, n, "tests.testapp.channels.KeyedLimited"),
                             in_flight) for n in range(1, 6)]

    assert ns(keys.release(listener, entries(0))) == [[1], [2]]
    assert ns(keys.release(listener, entries(1))) == [[1]]
    assert ns(keys.release(listener, entries(2))) == []


def test_a_batch_of_an_ordered_listener_holds_one_key_in_commit_order():
    entries = waiting((1, 1), (2, 1), (1, 2), (1, 3), (1, 4))
    assert ns(keys.release(listener_of(BATCHED), entries)) == [[1, 2, 3], [1]]


def test_debounce_merges_into_the_last_once_quiet_for_its_period():
    listener = listener_of(DEBOUNCED)  # debounce=1, debounce_max=10
    quiet = waiting((1, 1, 3.0), (1, 2, 2.5), (1, 3, 1.9))
    released = keys.release(listener, quiet)
    assert ns(released) == [[3]] and released.done == [1, 2, 3]
    busy = waiting((1, 1, 1.5), (1, 2, 1.0), (1, 3, 0.4))
    released = keys.release(listener, busy)
    assert ns(released) == [] and released.done == []
    assert released.next_due == pytest.approx(0.6)


def test_debounce_goes_at_debounce_max_after_the_first_and_splits_at_a_gap():
    listener = listener_of(DEBOUNCED)
    steady = waiting(*((1, n, 10.5 - 0.5 * n) for n in range(21)))  # every 0.5 s for 10.5 s
    released = keys.release(listener, steady)
    assert ns(released) == [[20]]  # recorded within 10 s of the first
    gap = waiting((1, 1, 5.0), (1, 2, 2.0), (1, 3, 0.1))
    released = keys.release(listener, gap)
    assert ns(released) == [[1], [2]] and released.next_due == pytest.approx(0.9)


# -- the bridge on an outbox in memory -------------------------------------------------------


@pytest.fixture
def bridge():
    with support.memory_bridge(batch_size=50,
                               channels=["tests.testapp.channels.KeyedInOrder"]) as bridge:
        yield bridge


def published(bridge):
    """(task id, key, n) of the messages on the queue, in order."""
    return [(headers["id"], payload["key"], payload["n"]) for headers, payload in (
        (headers, json.loads(envelope["payload"]))
        for headers, envelope in support.memory_messages(bridge))]


def test_the_claim_parks_keyed_notifications_and_each_finish_releases_the_next(bridge):
    [outbox] = bridge.outboxes
    store = outbox.store
    store.add(*(keyed(row_id, key, n) for row_id, (key, n) in enumerate(
        [(1, 1), (2, 1), (1, 2), (1, 3), (2, 2)], 1)))
    bridge._drain(outbox)
    assert store.pending == [] and len(store.parked) == 5
    bridge._release(outbox, full=True)
    first = published(bridge)
    assert [(key, n) for _, key, n in first] == [(1, 1), (2, 1)]
    bridge._release(outbox, full=True)
    assert published(bridge) == []  # both keys in flight
    store.finish(first[0][0])  # the worker finished key 1's first
    bridge._release(outbox, full=True)
    assert [(key, n) for _, key, n in published(bridge)] == [(1, 2)]
    assert sorted(store.remembered[task].key for task in store.remembered) == ["1", "2"]
    assert store.waiting_counts() == [("tests.testapp.channels.KeyedInOrder", IN_ORDER, 2)]


def test_a_release_after_finishes_looks_at_the_keys_of_the_finished_deliveries_only(bridge):
    [outbox] = bridge.outboxes
    store = outbox.store
    store.add(*(keyed(row_id, key, n) for row_id, (key, n) in enumerate(
        [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)], 1)))
    bridge._drain(outbox)
    bridge._release(outbox, full=True)
    first = {key: task_id for task_id, key, _ in published(bridge)}
    assert sorted(first) == [1, 2, 3]
    for key in (1, 2):
        store.finish(first[key])
    outbox.freed.add(first[1])  # the wake-up of key 1's finish only
    bridge._release(outbox, full=False)
    assert [(key, n) for _, key, n in published(bridge)] == [(1, 2)]
    assert outbox.freed == set()
    bridge._release(outbox, full=True)  # a drain's, or a sweep's
    assert [(key, n) for _, key, n in published(bridge)] == [(2, 2)]


def test_a_finish_wakes_the_bridges_with_its_task_id():
    assert keys.freed_task(keys.freed("a-task")) == "a-task"
    assert keys.freed_task(keys.FREED) == ""  # every key may be free
    assert keys.freed_task("") is None
    assert keys.freed_task(f"{keys.FREED}om") is None
