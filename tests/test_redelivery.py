"""Deliveries kept past the broker: ``redeliver_after``, and a worker lost mid-task.

Each test runs its bridge and worker on a redis-server of its own, so it can flush it.
"""

import collections
import datetime
import json
import os
import re
import signal
import threading
import time
import uuid

import pytest
import redis
from celery.app.task import Context
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import pgcelery
from pgcelery import messages, registry
from pgcelery import worker as worker_side
from pgcelery.models import Delivery, Notification
from tests import support
from tests.testapp.channels import Kept, KeptTally, Lingering, Message, Slow
from tests.testapp.listeners import kept_redelivered, kept_tallies, lingering
from tests.testapp.models import Event

pytestmark = [pytest.mark.connector]


def private_env(server, **extra):
    return support.subprocess_env(CELERY_BROKER_URL=server.url, **extra)


def queued_task_ids(server):
    """(task name, task id) of every message in the private broker's default queue."""
    client = redis.Redis.from_url(server.url)
    return [(headers["task"], headers["id"])
            for headers in (json.loads(raw)["headers"] for raw in client.lrange("celery", 0, -1))]


def runs(listener):
    """task id -> how many times ``listener`` took effect under it."""
    return collections.Counter(
        Event.objects.filter(listener=listener).values_list("task_id", flat=True))


def wait_until_finished(server):
    """Waits until every remembered delivery finished and the private queue is empty: no
    copy can be published again after that, and any copy still held by a worker is skipped."""
    support.wait_until(
        lambda: support.outbox_pending() == 0
        and not Delivery.objects.filter(finished_at__isnull=True).exists()
        and support.queue_length("celery", server.url) == 0,
        timeout=120, what="every delivery to finish")


@pytest.mark.faults
@pytest.mark.usefixtures("transactional_db")
def test_redeliver_after_publishes_again_what_a_flushed_broker_lost(private_redis, spawn):
    env = private_env(private_redis)
    bridge = spawn.bridge(env=env)
    with transaction.atomic():
        for n in range(500):
            pgcelery.notify(Kept, n=n)
    support.wait_until(lambda: support.queue_length("celery", private_redis.url) >= 1000,
                       what="both listeners' tasks to be published")
    queued = queued_task_ids(private_redis)
    original = {task_id for name, task_id in queued if name == kept_redelivered.name}
    assert len(original) == 500
    # The broker loses everything it held, as a Redis restarted without persistence does.
    redis.Redis.from_url(private_redis.url).flushall()

    spawn.worker(env=env, name="flushed-worker")
    support.wait_until(lambda: len(runs("kept_redelivered")) == 500, timeout=180,
                       what="every kept delivery to run")
    wait_until_finished(private_redis)

    kept = runs("kept_redelivered")
    assert set(kept) == original  # the task ids the bridge first published
    assert {task_id: count for task_id, count in kept.items() if count != 1} == {}
    assert runs("kept_plain") == {}  # without redeliver_after, the flushed tasks are lost
    assert "has not finished in time: published again" in bridge.log()
    assert bridge.stop() == 0


@pytest.mark.faults
@pytest.mark.usefixtures("transactional_db")
def test_a_run_longer_than_redeliver_after_is_published_again_and_takes_effect_once(
        private_redis, spawn):
    env = private_env(private_redis)
    worker = spawn.worker(env=env, name="lingering-worker")
    bridge = spawn.bridge(env=env)
    pgcelery.notify(Lingering, n=1, hold=5.0)
    support.wait_until(lambda: Event.objects.filter(listener="lingering").exists(),
                       what="the run to start")
    wait_until_finished(private_redis)
    assert worker.stop() == 0

    [(task_id, count)] = runs("lingering").items()
    assert count == 1  # atomic=True: the copies were no-ops
    received = re.findall(rf"Task {re.escape(lingering.name)}\[([0-9a-f-]+)\] received",
                          worker.log())
    assert len(received) >= 2 and set(received) == {task_id}
    assert "has not finished in time: published again" in bridge.log()
    assert bridge.stop() == 0


@pytest.mark.faults
@pytest.mark.usefixtures("transactional_db")
def test_a_worker_lost_mid_task_without_reject_on_worker_lost_is_one_failed_delivery(
        private_redis, spawn):
    env = private_env(private_redis,
                      PGCELERY_TEST_SETTING="CELERY_TASK_REJECT_ON_WORKER_LOST=false")
    worker = spawn.worker(env=env, name="no-requeue-worker")
    bridge = spawn.bridge(env=env)
    pgcelery.notify(Slow, n=1, hold=60.0)
    support.wait_until(lambda: Event.objects.filter(listener="slow_started").exists(),
                       what="the slow task to start")
    started = Event.objects.get(listener="slow_started")
    os.kill(started.data["pid"], signal.SIGKILL)
    support.wait_until(lambda: Notification.objects.filter(failed_at__isnull=False).exists(),
                       what="the failed delivery")
    assert worker.stop() == 0
    assert bridge.stop() == 0

    [failed] = Notification.objects.filter(failed_at__isnull=False)
    assert (failed.listener, failed.task_id, failed.attempts) == (
        "tests.testapp.listeners.slow", started.task_id, 1)
    assert failed.failure.startswith("WorkerLostError")
    assert Event.objects.filter(listener="slow_started").count() == 1  # not run again
    assert support.queue_length("celery", private_redis.url) == 0


@pytest.mark.faults
@pytest.mark.usefixtures("transactional_db")
def test_redeliver_after_publishes_a_lost_batch_again_under_its_task_id(private_redis, spawn):
    env = private_env(private_redis)
    bridge = spawn.bridge(env=env)
    with transaction.atomic():
        for n in range(50):
            pgcelery.notify(KeptTally, n=n)
    support.wait_until(lambda: support.queue_length("celery", private_redis.url) == 3,
                       what="three batches (20, 20, 10) to be published")
    published_ids = {task_id for _, task_id in queued_task_ids(private_redis)}
    # The broker loses them, as a Redis restarted without persistence does.
    redis.Redis.from_url(private_redis.url).flushall()

    spawn.worker(env=env, name="batch-flushed-worker")
    support.wait_for_batches("kept_tallies", 50, timeout=180)
    support.wait_until(lambda: support.queue_length("celery", private_redis.url) == 0
                       and not Notification.objects.exists(), what="the queue to empty")
    runs = support.batch_runs("kept_tallies")
    assert {task_id for task_id, _ in runs} == published_ids
    assert sorted(n for _, ns in runs for n in ns) == list(range(50))
    assert "has not finished in time: published again" in bridge.log()
    assert kept_tallies.name in bridge.log()



# -- the pieces, in-process ----------------------------------------------------------------

KEPT = "tests.testapp.channels.Kept"


def envelopes(queue="celery"):
    """task name -> (task id, envelope) of the messages in ``queue``."""
    return {m.headers["task"]: (m.headers["id"], m.decode()[1][messages.ENVELOPE])
            for m in support.take_messages(queue)}


@pytest.mark.integration
def test_only_deliveries_of_redeliver_after_listeners_are_remembered(bridge):
    pgcelery.notify(Kept, n=1)
    pgcelery.notify(Message, text="not remembered")
    assert bridge.drain() == 2
    sent = envelopes()
    task_id, envelope = sent[kept_redelivered.name]
    assert envelope["redeliver_after"] == 3
    assert "redeliver_after" not in sent["tests.testapp.listeners.kept_plain"][1]
    assert "redeliver_after" not in sent["tests.testapp.listeners.message_received"][1]
    [delivery] = Delivery.objects.all()
    assert (delivery.task_id, delivery.listener, delivery.channel, delivery.payload,
            delivery.period, delivery.publishes, delivery.finished_at) == (
        task_id, kept_redelivered.name, KEPT, {"n": 1}, datetime.timedelta(seconds=3), 1, None)


@pytest.mark.integration
def test_an_unfinished_delivery_is_published_again_under_its_task_id_when_due(bridge):
    pgcelery.notify(Kept, n=1)
    pgcelery.notify(Kept, n=2)
    bridge.drain()
    first = {envelope["payload"]: task_id for task_id, envelope in (
        (m.headers["id"], m.decode()[1][messages.ENVELOPE]) for m in support.take_messages("celery")
        if m.headers["task"] == kept_redelivered.name)}
    worker_side.finish_delivery("default", first['{"n": 2}'])
    Delivery.objects.update(redeliver_at=timezone.now() - datetime.timedelta(seconds=1))
    [outbox] = bridge.outboxes
    outbox.redeliver_at = 0.0
    bridge.redelivery.if_due(outbox)

    [(name, (task_id, envelope))] = envelopes().items()
    assert (name, task_id, envelope["payload"]) == (kept_redelivered.name, first['{"n": 1}'],
                                                    '{"n": 1}')
    assert "published_at" not in envelope  # a copy: the worker looks its delivery up
    again = Delivery.objects.get(task_id=task_id)
    assert again.publishes == 2 and again.redeliver_at > timezone.now()
    # Not due again before its period: the next look is planned for then.
    assert outbox.redeliver_at > time.monotonic() + 2


@pytest.mark.integration
def test_a_worker_finishing_before_the_bridge_commits_waits_for_it(bridge):
    pgcelery.notify(Kept, n=1)
    [outbox] = bridge.outboxes
    store = outbox.store
    finished = threading.Event()

    def finish(task_id):
        try:
            worker_side.finish_delivery("default", task_id)
        finally:
            connections.close_all()
        finished.set()

    with store.transaction():
        rows, _ = store.claim(10, bridge.batch_bytes, bridge.scope)
        bridge._dispatch_all(rows, outbox)
        [(task_id, _)] = [sent for name, sent in envelopes().items()
                          if name == kept_redelivered.name]
        # The task ran and finished before the bridge committed its claim.
        thread = threading.Thread(target=finish, args=[task_id])
        thread.start()
        assert not finished.wait(1.0)  # waits on the row the bridge has not committed
        store.delete(row.id for row in rows)
    thread.join(10)
    assert finished.is_set()
    assert Delivery.objects.get(task_id=task_id).finished_at is not None


def first_publish(bridge):
    """(task id, envelope) of a ``kept_redelivered`` delivery the bridge just published."""
    pgcelery.notify(Kept, n=1)
    bridge.drain()
    return envelopes()[kept_redelivered.name]


@pytest.mark.integration
def test_a_first_publish_taken_soon_runs_without_looking_its_delivery_up(bridge):
    task_id, envelope = first_publish(bridge)
    with CaptureQueriesContext(connection) as queries:
        kept_redelivered.apply(kwargs={messages.ENVELOPE: envelope}, task_id=task_id)
    assert [query["sql"] for query in queries if "delivery_finished" in query["sql"]] == []
    assert runs("kept_redelivered") == {task_id: 1}
    assert Delivery.objects.get(task_id=task_id).finished_at is not None


@pytest.mark.integration
@pytest.mark.parametrize("copy", ["published again", "taken late", "retried by Celery"])
def test_a_message_that_may_be_a_copy_of_a_finished_delivery_is_skipped(bridge, copy):
    task_id, envelope = first_publish(bridge)
    worker_side.finish_delivery("default", task_id)
    options = {}
    if copy == "published again":
        del envelope["published_at"]
    elif copy == "taken late":
        envelope["published_at"] -= envelope["redeliver_after"] / 2
    else:
        options["retries"] = 1
    kept_redelivered.apply(kwargs={messages.ENVELOPE: envelope}, task_id=task_id, **options)
    assert runs("kept_redelivered") == {}


@pytest.mark.unit
def test_a_message_the_broker_delivered_again_may_be_a_copy():
    envelope = {"published_at": time.time(), "redeliver_after": 300.0}
    assert not worker_side.may_be_a_copy(Context(retries=0, delivery_info={}), envelope)
    assert worker_side.may_be_a_copy(
        Context(retries=0, delivery_info={"redelivered": True}), envelope)


@pytest.mark.unit
def test_redeliver_after_is_the_listeners_or_the_settings():
    own = registry.Listener("t", KEPT, "", redeliver_after=3.0)
    unset = registry.Listener("t", KEPT, "")
    off = registry.Listener("t", KEPT, "", redeliver_after=None)
    assert (own.redelivery_period(), unset.redelivery_period(), off.redelivery_period()) == (
        3.0, None, None)
    with override_settings(PGCELERY_REDELIVER_AFTER=60):
        assert (own.redelivery_period(), unset.redelivery_period(), off.redelivery_period()) == (
            3.0, 60.0, None)


@pytest.mark.unit
@pytest.mark.parametrize("value", [0, -1, "3", True])
def test_an_unusable_redeliver_after_is_refused_where_it_is_declared(value):
    with pytest.raises(ImproperlyConfigured,
                       match="redeliver_after must be a number of seconds greater than 0"):
        pgcelery.listener(Kept, redeliver_after=value)


@pytest.mark.integration
def test_a_finished_delivery_published_again_is_run_once_its_bridge_commits(bridge):
    pgcelery.notify(Kept, n=1)
    [outbox] = bridge.outboxes
    store = outbox.store
    bridge.drain()
    [(task_id, _)] = [sent for name, sent in envelopes().items() if name == kept_redelivered.name]
    worker_side.finish_delivery("default", task_id)
    assert worker_side.delivery_finished("default", task_id)
    answers = []

    def check():
        try:
            answers.append(worker_side.delivery_finished("default", task_id))
        finally:
            connections.close_all()

    # Published again (as a failed delivery retried is), not yet committed by the bridge.
    [delivery] = Delivery.objects.all()
    row = messages.Row(delivery.notification, 0, uuid.uuid4(), KEPT, "", '{"n": 1}', None,
                       kept_redelivered.name, task_id)
    with store.transaction():
        listener = registry.find(KEPT, "", kept_redelivered.name)
        store.remember([(messages.Delivery(listener, task_id, [row]), 3.0)])
        thread = threading.Thread(target=check)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # waits for the bridge rather than read the old row
    thread.join(10)
    assert answers == [False]
