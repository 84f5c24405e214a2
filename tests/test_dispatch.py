"""The dispatch rules, and the bridge's claims on an outbox in memory: no database, no broker
server (kombu's in-memory transport)."""

import datetime
import json
import uuid

import pytest

from pgcelery import dispatch, messages, registry
from pgcelery.bridge import ClaimSize
from pgcelery.dispatch import Formed
from tests import support

pytestmark = pytest.mark.unit

MESSAGE = "tests.testapp.channels.Message"
TALLY = "tests.testapp.channels.Tally"
BATCHED = "tests.testapp.listeners.tallies_batched"


def message(row_id, text="hello", position=0):
    return messages.Row(row_id, position, uuid.UUID(int=row_id), MESSAGE, "",
                        json.dumps({"text": text}), None)


def tally(row_id, n):
    return messages.Row(row_id, 0, uuid.UUID(int=row_id), TALLY, "",
                        json.dumps({"n": n, "day": "2026-01-01"}), None)


def test_each_listener_gets_its_own_delivery_of_each_notification():
    failed = []
    found = dispatch.deliveries([message(1), message(2)], failed)
    assert failed == []
    names = [listener.task_name for listener in registry.listeners_for(MESSAGE, "")]
    assert sorted((d.listener.task_name, d.row.id) for d in found) == sorted(
        (name, row_id) for name in names for row_id in (1, 2))
    assert len({d.task_id for d in found}) == len(found)


def test_a_batch_listener_gets_its_notifications_in_batches_of_its_size_in_order():
    failed = []
    found = dispatch.deliveries([tally(n, n) for n in range(1, 121)], failed)
    batches = [d for d in found if d.listener.task_name == BATCHED]
    assert [[row.id for row in d.rows] for d in batches] == [
        list(range(1, 51)), list(range(51, 101)), list(range(101, 121))]


def test_rows_that_cannot_go_are_failures_with_their_reason_and_the_rest_goes():
    unreadable = message(1)._replace(payload=messages.UNREADABLE)
    unknown = message(2)._replace(channel="gone.channels.Gone")
    undecodable = message(3)._replace(payload='{"text": 5}')
    failed = []
    found = dispatch.deliveries([unreadable, unknown, undecodable, message(4)], failed)
    assert {d.row.id for d in found} == {4}
    reasons = {row_id: reason for row_id, _, reason in failed}
    assert reasons[1].startswith("malformed outbox row")
    assert reasons[2].startswith("unknown channel 'gone.channels.Gone'")
    assert "listeners.py" in reasons[2] and "tasks.py" in reasons[2]
    assert reasons[3].startswith("payload cannot be decoded")


def test_a_retried_failed_delivery_goes_to_its_listener_alone_under_its_task_id():
    retried = message(1)._replace(listener="tests.testapp.listeners.message_received",
                                  task_id="kept-id")
    [delivery] = dispatch.deliveries([retried], [])
    assert (delivery.listener.task_name, delivery.task_id) == (
        "tests.testapp.listeners.message_received", "kept-id")


def test_a_formed_batch_goes_as_it_was_whatever_else_the_claim_holds():
    rows = [tally(n, n) for n in range(1, 31)]
    formed = Formed("formed-id", BATCHED, tuple((n, 0) for n in range(5, 15)))
    found = [d for d in dispatch.deliveries(rows, [], [formed])
             if d.listener.task_name == BATCHED]
    assert sorted(([row.id for row in d.rows], d.task_id == "formed-id") for d in found) == [
        ([*range(1, 5), *range(15, 31)], False), (list(range(5, 15)), True)]


def test_a_formed_batch_missing_notifications_leaves_its_rows_and_those_it_breaks():
    rows = [tally(n, n) for n in (1, 2, 3, 4)]
    whole = Formed("whole", BATCHED, ((1, 0), (2, 0)))
    broken = Formed("broken", BATCHED, ((3, 0), (9, 0)))  # row 9 is another claim's
    chained = Formed("chained", BATCHED, ((4, 0), (3, 0)))
    assert dispatch.complete([whole, broken, chained], rows) == ([whole], {3, 4})


# -- the bridge on an outbox in memory ---------------------------------------------------------


@pytest.fixture
def bridge():
    with support.memory_bridge(batch_size=10) as bridge:
        yield bridge


def published(bridge):
    """(task name, task id, the notifications' row ids) of the messages on the queue."""
    return [(headers["task"], headers["id"],
             [item[0] for item in envelope["batch"]] if "batch" in envelope else [envelope["id"]])
            for headers, envelope in support.memory_messages(bridge)]


def test_a_claim_publishes_its_rows_and_deletes_them_but_keeps_failures(bridge):
    [outbox] = bridge.outboxes
    outbox.store.add(message(1), message(2)._replace(payload='{"text": 5}'))
    assert bridge._batch(outbox) == (2, False)
    assert outbox.store.pending == []
    assert [(row.id, reason.split(":")[0]) for row, reason in outbox.store.failed] == [
        (2, "payload cannot be decoded")]
    assert {ids[0] for _, _, ids in published(bridge)} == {1}


def test_a_claim_lost_before_its_commit_publishes_its_batch_again_as_formed(bridge):
    [outbox] = bridge.outboxes
    outbox.store.add(*(tally(n, n) for n in range(1, 31)))
    with pytest.raises(RuntimeError), outbox.store.transaction():
        rows, formed, _ = bridge._claim(outbox, 10, bridge.batch_bytes)
        bridge._dispatch_all(rows, outbox, formed)
        raise RuntimeError("the connection was lost before the commit")
    [(_, first, ids)] = [sent for sent in published(bridge) if sent[0] == BATCHED]
    assert ids == list(range(1, 11)) and len(outbox.store.pending) == 30
    outbox.claim = ClaimSize(5, bridge.batch_bytes)  # shrunk after the timeout
    while bridge._batch(outbox)[1]:
        pass
    again = [sent for sent in published(bridge) if sent[0] == BATCHED]
    assert (BATCHED, first, list(range(1, 11))) in again
    assert sorted(row_id for _, _, ids in again for row_id in ids) == list(range(1, 31))
    assert outbox.store.pending == [] and outbox.store.formed == {}


def test_a_claim_is_bounded_by_notifications_and_decoded_bytes(bridge):
    [outbox] = bridge.outboxes
    outbox.store.add(*(message(n, "x" * 1000) for n in range(1, 26)))
    assert bridge._batch(outbox) == (10, True)
    outbox.claim = ClaimSize(100, 4500)
    assert bridge._batch(outbox) == (4, True)
    outbox.claim = ClaimSize(100, 10)  # one row goes, whatever its size
    assert bridge._batch(outbox) == (1, True)


def test_a_delivery_remembered_and_unfinished_is_published_again_when_due(bridge):
    kept = messages.Row(1, 0, uuid.UUID(int=1), "tests.testapp.channels.Kept", "",
                        '{"n": 1}', None)
    [outbox] = bridge.outboxes
    outbox.store.add(kept)
    bridge._batch(outbox)
    [task_id] = [task for name, task, _ in published(bridge)
                 if name == "tests.testapp.listeners.kept_redelivered"]
    outbox.store.remembered[task_id].due_at = 0.0
    outbox.redeliver_at = 0.0
    bridge.redelivery.if_due(outbox)
    assert published(bridge) == [("tests.testapp.listeners.kept_redelivered", task_id, [1])]
    assert outbox.store.remembered[task_id].due_at > 0.0
    assert datetime.timedelta(seconds=outbox.store.next_redelivery(None)) > datetime.timedelta(0)
