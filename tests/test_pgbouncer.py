"""The bridge and the writers through pgbouncer, started by each test on a free port.

In transaction pooling a client's transactions run on any server connection: session
state (LISTEN, SET, PREPARE) stays behind on a connection another client gets next.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
from django.db import connection

import pgcelery
from pgcelery import channels, sql
from tests import support
from tests.testapp.channels import Message
from tests.testapp.models import Event

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

pytestmark = [
    pytest.mark.faults,
    pytest.mark.usefixtures("transactional_db"),
    pytest.mark.skipif(not os.path.exists(PGBOUNCER),
                       reason="pgbouncer is not installed (Debian's package pgbouncer)"),
    pytest.mark.connector,
]


MESSAGE = "tests.testapp.channels.Message"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Pgbouncer:
    """A pgbouncer in front of the test database, in the given pool mode."""

    def __init__(self, pool_mode):
        # Not under pytest's temporary directory, which only root may enter.
        directory = Path(tempfile.mkdtemp(prefix="pgcelery-pgbouncer-"))
        directory.chmod(0o755)
        self.directory = directory
        settings = connection.settings_dict
        self.port = free_port()
        self.database = settings["NAME"]
        host = settings["HOST"] or "127.0.0.1"
        config = directory / "pgbouncer.ini"
        config.write_text(textwrap.dedent(f"""\
            [databases]
            * = host={host} port={settings['PORT'] or 5432} user={settings['USER'] or 'postgres'}
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = {self.port}
            unix_socket_dir =
            auth_type = any
            pool_mode = {pool_mode}
            default_pool_size = 4
            max_client_conn = 100
            ignore_startup_parameters = extra_float_digits,options
            logfile = {directory / 'pgbouncer.log'}
            pidfile = {directory / 'pgbouncer.pid'}
        """))
        user = []
        if os.geteuid() == 0:  # pgbouncer will not run as root
            postgres = pwd.getpwnam("postgres")
            os.chown(directory, postgres.pw_uid, postgres.pw_gid)
            user = ["-u", "postgres"]
        self.process = subprocess.Popen([PGBOUNCER, *user, str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        support.wait_until(lambda: support.port_open(self.port), 20, "pgbouncer")
        user_name = settings["USER"] or "postgres"
        self.url = f"postgresql://{user_name}@127.0.0.1:{self.port}/{self.database}"

    def connect(self):
        """A connection of the driver Django uses."""
        return connection.Database.connect(self.url)

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def transaction_pooler():
    bouncer = Pgbouncer("transaction")
    yield bouncer
    bouncer.stop()


def test_a_bridge_behind_transaction_pooling_says_it_cannot_listen_and_sweeps(
        transaction_pooler, spawn):
    env = support.subprocess_env(DATABASE_URL=transaction_pooler.url,
                                 PGCELERY_TEST_SETTING="PGCELERY_SWEEP_INTERVAL=1")
    spawn.worker()
    bridges = [spawn.bridge(env=env, name=f"pooled-bridge-{n}") for n in range(2)]
    for bridge in bridges:
        bridge.wait_for_log("wake-ups do not reach the bridge")
        assert "sweeps the outbox every 1.0 s" in bridge.log()
    for n in range(20):
        pgcelery.notify(Message, text=f"pooled {n}")
    support.wait_until(lambda: Event.objects.filter(listener="message_received").count() >= 20,
                       what="the notifications, swept")
    support.settle()
    assert [bridge.stop() for bridge in bridges] == [0, 0]  # no statement name collided
    texts = sorted(Event.objects.filter(listener="message_received")
                   .values_list("data__text", flat=True))
    assert texts == sorted(f"pooled {n}" for n in range(20))


@pytest.fixture
def no_worker():
    """The test publishes for no worker: its tasks are purged after it."""
    yield
    support.purge_queues()


@pytest.mark.usefixtures("no_worker")
def test_nothing_the_bridge_sets_leaks_to_other_clients_of_the_pooler(
        transaction_pooler, spawn):
    env = support.subprocess_env(DATABASE_URL=transaction_pooler.url,
                                 PGCELERY_TEST_SETTING="PGCELERY_SWEEP_INTERVAL=0.2")
    bridge = spawn.bridge(env=env)
    for n in range(50):
        pgcelery.notify(Message, text=f"leak {n}")
    support.wait_until(lambda: support.outbox_pending() == 0, what="the bridge to publish")
    seen = set()
    writers = [transaction_pooler.connect() for _ in range(8)]
    try:
        for _ in range(5):
            for writer in writers:
                with writer.cursor() as cursor:
                    cursor.execute("SELECT current_setting('synchronous_commit'), "
                                   "(SELECT count(*) FROM pg_prepared_statements)")
                    seen.add(cursor.fetchone())
                writer.commit()
    finally:
        for writer in writers:
            writer.close()
    assert bridge.stop() == 0
    assert seen == {("on", 0)}


def test_writers_through_any_pooling_mode_are_delivered(spawn):
    spawn.worker()
    spawn.bridge()
    for mode in ("session", "transaction", "statement"):
        bouncer = Pgbouncer(mode)
        try:
            writer = bouncer.connect()
            writer.autocommit = mode == "statement"  # statement pooling allows no transactions
            with writer.cursor() as cursor:
                for n in range(5):
                    cursor.execute(sql.NOTIFY, [MESSAGE, channels.pg_channel(MESSAGE), "",
                                                f'{{"text": "{mode} {n}"}}'])
            if not writer.autocommit:
                writer.commit()
            writer.close()
        finally:
            bouncer.stop()
    support.wait_until(lambda: Event.objects.filter(listener="message_received").count() >= 15,
                       what="every pooled writer's notifications")
    support.settle()
    texts = sorted(Event.objects.filter(listener="message_received")
                   .values_list("data__text", flat=True))
    assert texts == sorted(f"{mode} {n}" for mode in ("session", "transaction", "statement")
                           for n in range(5))
