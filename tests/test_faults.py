"""Faults injected into the real bridge, broker, database and worker processes.

Each test asserts exact outcomes: every notification's listener ran, and none ran twice
unless the fault forced a redelivery, in which case the repeat has the same task id.
"""

import collections
import datetime
import json
import os
import re
import signal
import time

import psutil
import pytest
from celery import current_app
from django.db import connection, transaction

import pgcelery
from pgcelery.connector import APPLICATION_NAME
from pgcelery.models import Notification
from tests import support
from tests.testapp.channels import Counted, Flaky, Message, Slow, Tally
from tests.testapp.listeners import count_once
from tests.testapp.models import Event

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("transactional_db"),
              pytest.mark.connector]


@pytest.fixture
def worker(worker_process):
    """The module's worker; each test leaves nothing in flight behind it."""
    yield worker_process
    support.settle()


def notify_messages(count, prefix="m", per_transaction=500):
    for start in range(0, count, per_transaction):
        with transaction.atomic():
            for n in range(start, min(start + per_transaction, count)):
                pgcelery.notify(Message, text=f"{prefix}{n}")


def runs_by_text():
    """text -> the task ids of every run of message_received for it."""
    runs = collections.defaultdict(list)
    for data, task_id in Event.objects.filter(listener="message_received").values_list(
            "data", "task_id"):
        runs[data["text"]].append(task_id)
    return runs


def wait_for_texts(count, timeout=180):
    support.wait_until(lambda: Event.objects.filter(listener="message_received")
                       .values("data__text").distinct().count() >= count,
                       timeout, f"{count} distinct messages")


def assert_each_ran_once(count, prefix="m"):
    runs = runs_by_text()
    assert sorted(runs) == sorted(f"{prefix}{n}" for n in range(count))
    assert {text: ids for text, ids in runs.items() if len(ids) != 1} == {}


def published(bridge):
    return sum(int(n) for n in re.findall(r"Published (\d+) notification", bridge.log()))


def test_notifications_committed_while_the_bridge_is_down_are_all_delivered(worker, spawn):
    spawn.bridge().stop()
    notify_messages(300)
    bridge = spawn.bridge()
    wait_for_texts(300)
    support.settle()
    assert bridge.stop() == 0
    assert_each_ran_once(300)


def test_a_bridge_killed_mid_batch_loses_nothing(worker, spawn, capsys):
    notify_messages(5000)
    first = spawn.bridge()
    support.wait_until(lambda: published(first) >= 500, what="the first batch")
    first.stop(signal.SIGKILL)
    assert first.popen.returncode == -signal.SIGKILL
    second = spawn.bridge()
    wait_for_texts(5000)
    support.settle()
    assert second.stop() == 0
    runs = runs_by_text()
    assert sorted(runs) == sorted(f"m{n}" for n in range(5000))
    repeated = {text: ids for text, ids in runs.items() if len(ids) > 1}
    # A redelivery repeats its task id, and only the batch in flight can be redelivered.
    assert all(len(set(ids)) == 1 for ids in repeated.values())
    duplicates = sum(len(ids) - 1 for ids in repeated.values())
    assert duplicates <= 500
    with capsys.disabled():
        print(f"\n  SIGKILL mid-drain of 5000: {published(first)} published before the kill, "
              f"{duplicates} duplicate run(s), all with their original task id")


def test_a_bridge_killed_mid_batch_repeats_at_most_one_claim_with_the_same_task_ids(
        worker, spawn):
    for start in range(0, 3000, 500):
        with transaction.atomic():
            for n in range(start, start + 500):
                pgcelery.notify(Tally, n=n, day=datetime.date(2026, 1, 1))
    first = spawn.bridge()
    support.wait_until(lambda: published(first) >= 500, what="the first claim")
    first.stop(signal.SIGKILL)
    second = spawn.bridge()
    support.wait_for_batches("tallies_batched", 3000, timeout=180)
    support.settle()
    assert second.stop() == 0

    task_ids = collections.defaultdict(list)
    for task_id, ns in support.batch_runs("tallies_batched"):
        for n in ns:
            task_ids[n].append(task_id)
    assert sorted(task_ids) == list(range(3000))
    repeated = {n: ids for n, ids in task_ids.items() if len(ids) > 1}
    # A repeated batch is the same batch: the same notifications under the same task id.
    assert all(len(set(ids)) == 1 for ids in repeated.values())
    assert sum(len(ids) - 1 for ids in repeated.values()) <= 500  # one claim at most


def test_a_broker_outage_delays_but_loses_nothing(private_redis, spawn):
    env = support.subprocess_env(CELERY_BROKER_URL=private_redis.url)
    worker = spawn.worker(env=env, name="outage-worker")
    bridge = spawn.bridge(env=env)
    private_redis.stop()
    notify_messages(200)
    cpu_before = sum(psutil.Process(bridge.popen.pid).cpu_times()[:2])
    time.sleep(6)
    cpu_during = sum(psutil.Process(bridge.popen.pid).cpu_times()[:2]) - cpu_before
    assert bridge.popen.poll() is None
    private_redis.start()
    wait_for_texts(200)
    support.wait_until(lambda: support.outbox_pending() == 0
                       and support.queue_length("celery", private_redis.url) == 0,
                       what="the outbox and the private broker's queue to empty")
    assert worker.stop() == 0
    assert support.queue_length("celery", private_redis.url) == 0
    assert bridge.stop() == 0
    assert_each_ran_once(200)
    log = bridge.log()
    # Backoff, not a busy loop; and one log line per change of state, not one per row.
    assert cpu_during < 1.0
    assert log.count("Broker unavailable") == 1
    assert log.count("Broker available again") == 1


def bridge_backends(select: str = "count(*)") -> int:
    """The database sessions of bridges, counted (or, with ``select``, acted on)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {select} FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()", [APPLICATION_NAME])
        return cursor.fetchone()[0]


def test_a_lost_database_connection_is_reopened_and_caught_up(worker, spawn):
    bridge = spawn.bridge()
    # The session of an earlier test's bridge can outlive its process by a moment.
    support.wait_until(lambda: bridge_backends() == 1,
                       what="the bridge's to be the only bridge session")
    assert bridge_backends("count(pg_terminate_backend(pid))") == 1
    notify_messages(200)
    wait_for_texts(200)
    support.settle()
    assert bridge.stop() == 0
    assert_each_ran_once(200)
    assert bridge.log().count("Database 'default' unavailable") == 1
    assert bridge.log().count("Database 'default' available again") == 1


@pytest.mark.parametrize("bridges", [2, 3])
def test_concurrent_bridges_dispatch_each_notification_once(worker, spawn, bridges):
    running = [spawn.bridge() for _ in range(bridges)]
    notify_messages(2000, per_transaction=100)
    wait_for_texts(2000)
    support.settle()
    assert [bridge.stop() for bridge in running] == [0] * bridges
    assert sum(published(bridge) for bridge in running) == 2000
    assert_each_ran_once(2000)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_batch_in_hand_and_exits_0(worker, spawn, signum):
    notify_messages(3000)
    bridge = spawn.bridge()
    support.wait_until(lambda: published(bridge) > 0, what="the first batch")
    bridge.popen.send_signal(signum)
    assert bridge.popen.wait(10) == 0
    assert "Bridge stopped." in bridge.log()
    # Whole batches only: what was published is gone from the outbox, the rest is all there.
    assert support.outbox_pending() == 3000 - published(bridge)
    bridge.stop()
    restarted = spawn.bridge()
    wait_for_texts(3000)
    support.settle()
    assert restarted.stop() == 0
    assert_each_ran_once(3000)


def test_a_worker_killed_mid_task_runs_the_task_again(worker, spawn):
    bridge = spawn.bridge()
    pgcelery.notify(Slow, n=1, hold=5.0)
    support.wait_until(lambda: Event.objects.filter(listener="slow_started").exists(),
                       what="the slow task to start")
    first = Event.objects.get(listener="slow_started")
    os.kill(first.data["pid"], signal.SIGKILL)
    support.wait_until(lambda: Event.objects.filter(listener="slow_done").exists(),
                       what="the slow task to complete")
    support.settle()
    assert bridge.stop() == 0
    started = list(Event.objects.filter(listener="slow_started").values_list("task_id", flat=True))
    assert len(started) == 2 and len(set(started)) == 1
    assert list(Event.objects.filter(listener="slow_done").values_list("task_id", flat=True)) == [
        started[0]
    ]
    # With acks_late and reject_on_worker_lost, the lost run was requeued, not failed.
    assert not Notification.objects.filter(failed_at__isnull=False).exists()


def test_an_atomic_listener_killed_after_its_commit_is_not_run_twice(worker, spawn, log_dir):
    bridge = spawn.bridge()
    pgcelery.notify(Counted, n=1, crash=True)
    support.wait_until(lambda: "already ran; skipping the repeat" in worker.log(),
                       what="the redelivered task to be skipped")
    support.settle()
    assert bridge.stop() == 0
    assert (log_dir / "crashed").exists()
    assert Event.objects.filter(listener="count_once").count() == 1


def test_the_same_task_delivered_twice_has_one_effect(worker):
    pgcelery.notify(Counted, n=2)
    with connection.cursor() as cursor:
        # Taken from the outbox as a bridge would, then published twice.
        cursor.execute("DELETE FROM pgcelery_notification "
                       "RETURNING id, uuid, channel, trigger, payload::text")
        row = cursor.fetchone()
    envelope = {"id": row[0], "channel": row[2], "trigger": row[3], "payload": row[4],
                "context": None, "database": "default"}
    for _ in range(2):
        current_app.send_task(count_once.name, kwargs={"_pgcelery": envelope}, task_id="twice")
    support.wait_until(lambda: "count_once[twice] ignored" in worker.log(),
                       what="both deliveries to run")
    assert worker.log().count("count_once[twice] succeeded") == 1
    assert list(Event.objects.filter(listener="count_once").values_list("task_id", flat=True)) == [
        "twice"
    ]


def test_a_failing_listener_is_retried_by_celery_and_never_stops_the_bridge(worker, spawn):
    bridge = spawn.bridge()
    pgcelery.notify(Flaky, failures=2)
    pgcelery.notify(Flaky, failures=5)
    notify_messages(10)
    support.wait_until(lambda: Event.objects.filter(listener="flaky_attempt").count() == 6,
                       what="every attempt")
    wait_for_texts(10)
    support.settle()
    assert bridge.stop() == 0
    attempts = collections.Counter(
        Event.objects.filter(listener="flaky_attempt").values_list("task_id", flat=True))
    assert sorted(attempts.values()) == [3, 3]
    assert Event.objects.filter(listener="flaky_done").count() == 1
    assert "RuntimeError: attempt 2 fails" in worker.log()
    assert_each_ran_once(10)
    # Retries exhausted: one failed delivery, not one per attempt.
    [exhausted] = [task_id for task_id, count in attempts.items()
                   if not Event.objects.filter(listener="flaky_done", task_id=task_id).exists()]
    [failed] = Notification.objects.filter(failed_at__isnull=False)
    assert (failed.listener, failed.task_id, failed.attempts, failed.failure) == (
        "tests.testapp.listeners.flaky", exhausted, 3, "RuntimeError: attempt 2 fails")
    [status] = json.loads(support.status_json())["channels"]
    assert (status["channel"], status["pending"], status["failed"]) == (
        "tests.testapp.channels.Flaky", 0, 1)
