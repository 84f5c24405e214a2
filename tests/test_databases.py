"""One bridge draining the outboxes of two real databases."""

import json
import select
import threading

import pytest
from celery import current_app
from django.db import connections

import pgcelery
from pgcelery import messages
from pgcelery.bridge import Bridge
from pgcelery.connector import APPLICATION_NAME
from pgcelery.models import Notification, TaskRecord
from tests import support
from tests.testapp.channels import Counted, Message
from tests.testapp.models import Event

pytestmark = [pytest.mark.django_db(transaction=True, databases=["default", "other"]),
              pytest.mark.connector, pytest.mark.broker]


@pytest.fixture
def bridge():
    support.purge_queues()
    bridge = Bridge(current_app._get_current_object(), databases=["default", "other"])
    bridge.connect()
    yield bridge
    bridge.close()
    support.purge_queues()


def published_envelopes():
    return [m.decode()[1][messages.ENVELOPE] for m in support.take_messages("celery")]


def test_each_database_is_drained_with_its_own_rows(bridge):
    pgcelery.notify(Message, text="in default")
    pgcelery.notify(Message, text="in other", using="other")
    assert bridge.drain() == 2
    published = support.take_messages("celery")
    envelopes = [m.decode()[1][messages.ENVELOPE] for m in published]
    assert sorted((json.loads(e["payload"])["text"], e["database"]) for e in envelopes) == [
        ("in default", "default"), ("in other", "other"),
    ]
    # Task ids are each database's own, even where row ids coincide.
    assert len({m.headers["id"] for m in published}) == 2
    assert not Notification.objects.using("default").exists()
    assert not Notification.objects.using("other").exists()


def test_each_database_waits_for_its_own_wake_ups(bridge):
    for outbox in bridge.outboxes:
        bridge._turn(outbox)  # drained; next due at the sweep
    default, other = bridge.outboxes
    assert bridge._wait(other, timeout=0) is False
    pgcelery.notify(Message, text="only in other", using="other")
    assert bridge._wait(other, timeout=10) is True
    assert bridge._wait(default, timeout=0.5) is False
    assert [outbox.alias for outbox in bridge.outboxes if outbox.sweep_at == 0] == ["other"]
    assert bridge.drain() == 1
    [envelope] = published_envelopes()
    assert envelope["database"] == "other"


def test_a_connection_lost_during_a_wait_is_retried_at_its_backoff_not_at_the_sweep(bridge):
    """The wait ends when the connection turns out lost, so the retry is not put off until
    the next sweep (300 s in the tests)."""
    for outbox in bridge.outboxes:
        bridge._turn(outbox)
    default, other = bridge.outboxes
    with connections["other"].cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE application_name = %s AND datname = current_database()",
                       [APPLICATION_NAME])
        assert cursor.fetchone()[0] == 1
    assert select.select([other.connector], [], [], 10)[0]  # the server said goodbye
    waiting = threading.Thread(target=bridge._wait, args=(other, 300))
    waiting.start()
    waiting.join(60)
    assert not waiting.is_alive(), "the wait went on for the sweep"
    assert other.health.down and not other.connector.connected
    assert bridge._next_turn(other) == other.health.retry_at < default.sweep_at
    other.health.retry_at = 0.0
    bridge._turn(other)
    assert other.connector.connected and not other.health.down


def test_notify_without_using_writes_to_the_default_database():
    pgcelery.notify(Message, text="default")
    assert Notification.objects.using("default").count() == 1
    assert not Notification.objects.using("other").exists()


def test_atomic_listeners_record_their_run_in_the_notifications_database(
        worker_process, spawn):
    bridge = spawn.bridge("--database", "default", "other")
    pgcelery.notify(Counted, n=1, fail=False, hold=0, using="other")
    support.wait_until(lambda: Event.objects.filter(listener="count_once").exists(),
                       what="the atomic listener's run")
    support.settle()
    [event] = Event.objects.filter(listener="count_once")
    assert list(TaskRecord.objects.using("other").values_list("task_id", flat=True)) == [
        event.task_id
    ]
    assert not TaskRecord.objects.using("default").exists()
    assert bridge.stop() == 0


def refuse_connections(alias, refuse):
    """Makes database ``alias`` unreachable (or reachable again) without stopping the server."""
    name = connections[alias].settings_dict["NAME"]
    connections[alias].close()
    with connections["default"].cursor() as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if refuse else "true"}')
        if refuse:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = %s", [name])


def texts_received():
    return sorted(e.data["text"] for e in Event.objects.filter(listener="message_received"))


def wait_for_texts(expected):
    try:
        support.wait_until(lambda: texts_received() == expected, what=f"texts {expected}")
    except AssertionError as exc:
        events = list(Event.objects.values_list("listener", "data", "task_id"))
        raise AssertionError(f"{exc}; the events are {events}") from None


@pytest.mark.faults
def test_a_database_that_goes_down_does_not_stop_the_others(worker_process, spawn):
    bridge = spawn.bridge("--database", "default", "other")
    refuse_connections("other", True)
    try:
        pgcelery.notify(Message, text="while other is down")
        wait_for_texts(["while other is down"])
        assert bridge.popen.poll() is None
    finally:
        refuse_connections("other", False)
    pgcelery.notify(Message, text="after other is back", using="other")
    wait_for_texts(["after other is back", "while other is down"])
    support.settle()
    support.wait_until(lambda: support.outbox_pending("other") == 0, what="other's outbox")
    assert bridge.stop() == 0
    log = bridge.log()
    assert log.count("Database 'other' unavailable") == 1
    assert log.count("Database 'other' available again") == 1
    assert "Database 'default' unavailable" not in log


@pytest.mark.e2e  # runs a manage.py command as a subprocess
def test_status_covers_every_database_and_names_each_entrys():
    pgcelery.notify(Message, text="pending in other", using="other")
    result = support.manage("pgcelery_status", "--json", "--database", "default", "other")
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)["channels"]
    assert (entry["database"], entry["channel"], entry["pending"]) == (
        "other", "tests.testapp.channels.Message", 1)
