import uuid

import pytest
from celery import current_app
from django.db import connection
from django.test import TransactionTestCase

from pgcelery.bridge import Bridge
from tests import support

#: Test tiers, from the cheapest: no service; PostgreSQL (and the broker, in-process); the real
#: commands as subprocesses; faults injected into them. ``make test-fast`` runs the first two.
TIERS = ("unit", "integration", "e2e", "faults")
_SUBPROCESS_FIXTURES = {"spawn", "worker_process", "bridge_process", "running"}
_DATABASE_FIXTURES = {"db", "transactional_db"}


def pytest_collection_modifyitems(items):
    """Gives each test without a tier marker the tier its fixtures put it in."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        fixtures = set(item.fixturenames)
        if fixtures & _SUBPROCESS_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        elif (fixtures & _DATABASE_FIXTURES or item.get_closest_marker("django_db")
              or issubclass(getattr(item, "cls", None) or object, TransactionTestCase)):
            # Django's TestCase classes set up the test database without a fixture.
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def worker_process(django_db_setup, django_db_blocker, log_dir):
    """A real ``celery -A proj worker`` on the test database, for the tests of one module."""
    with django_db_blocker.unblock():
        support.purge_queues()
        process = support.start_worker(log_dir)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def bridge_process(django_db_setup, django_db_blocker, log_dir):
    """A real ``manage.py pgcelery_bridge`` on the test database, for the tests of one module."""
    with django_db_blocker.unblock():
        process = support.start_bridge(log_dir)
    yield process
    assert process.stop() == 0, process.log()[-3000:]


@pytest.fixture
def running(bridge_process, worker_process, transactional_db):
    """Bridge and worker running; each test leaves nothing in flight behind it."""
    yield
    support.settle()


@pytest.fixture
def spawn(log_dir):
    """Starts bridges and workers for one test, and stops whatever is left running after it."""
    started = []

    class Spawn:
        @staticmethod
        def bridge(*args, **kwargs):
            started.append(support.start_bridge(log_dir, *args, **kwargs))
            return started[-1]

        @staticmethod
        def worker(**kwargs):
            started.append(support.start_worker(log_dir, **kwargs))
            return started[-1]

    yield Spawn
    for process in started:
        process.stop()


@pytest.fixture
def fresh_databases(transactional_db):
    """Creates empty databases on the server, owned by ``owner`` (the test's user when
    None); drops them after the test."""
    created: list[str] = []

    def create(owner: str | None = None) -> str:
        name = f"pgcelery_fresh_{uuid.uuid4().hex[:8]}"
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"'
                           + (f' OWNER "{owner}"' if owner else ""))
        created.append(name)
        return name

    yield create
    with connection.cursor() as cursor:
        for name in created:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of the test's own, to stop, flush or freeze."""
    server = support.RedisServer(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture
def bridge(transactional_db):
    """A bridge in-process on the test database, connected, batches of 10; no worker."""
    support.purge_queues()
    bridge = Bridge(current_app._get_current_object(), batch_size=10)
    bridge.connect()
    yield bridge
    bridge.close()
    support.purge_queues()
