"""The driver adapter: the bridge's connection to one database.

The bridge connects, LISTENs, waits for wake-ups and runs transactions through this small
interface, so its loop never touches a driver; what it reads and changes in the outbox goes
through ``store.DatabaseStore``, which runs pgcelery's SQL here. psycopg2 and psycopg 3 each
implement the few calls where they differ; the driver is the one Django uses for the
database, so a project on psycopg 3 needs no psycopg2.
"""

from __future__ import annotations

import abc
import contextlib
import secrets
import select
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.db import connections
from django.db.backends.postgresql.psycopg_any import is_psycopg3

from pgcelery import conf, filters, sql
from pgcelery.watchdog import Watchdog

#: Connection parameters Django passes that only its own cursors and adapters use.
_DJANGO_ONLY_PARAMS = ("context", "cursor_factory", "prepare_threshold")
#: How the bridge's connections show in pg_stat_activity.
APPLICATION_NAME = "pgcelery_bridge"
#: The short-lived session that checks whether wake-ups arrive, told apart from the bridge's.
PROBE_APPLICATION_NAME = "pgcelery_bridge_probe"
#: The session of ``run_apart``: statements committed apart from the claim in progress.
APART_APPLICATION_NAME = "pgcelery_bridge_batches"
#: TCP keepalives of the bridge's connections, unless the database's OPTIONS set them.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}
#: How long a connection waits for its probe wake-up before it concludes none arrive.
PROBE_SECONDS = 2.0

#: A wake-up as received: (pg channel, payload).
Wakeup = tuple[str, str]


class MissingPrivileges(Exception):
    """The bridge's database role cannot do its work; it says which grants to add."""


class Connector(abc.ABC):
    """One connection of the bridge to the outbox of database ``alias``.

    Attributes:
        errors: The driver's exceptions meaning the database is unreachable or the
            connection was lost; the bridge reconnects with backoff on them.
    """

    errors: tuple[type[Exception], ...]

    def __init__(self, alias: str) -> None:
        self.alias = alias
        #: Whether wake-ups reach the connection (not through a transaction pooler).
        self.listening = False
        self._connection: Any = None
        #: The connection of ``run_apart``, opened when first needed.
        self._apart: Any = None
        self._params: dict[str, Any] = {}
        self._wakeups: list[Wakeup] = []
        #: Inside ``transaction``: whether BEGIN was sent, and the statements that wait
        #: to go with its COMMIT.
        self._begun = False
        self._deferred: list[str] | None = None
        self.watchdog: Watchdog | None = None
        self.timeout = conf.database_timeout()
        self.notification_filter = conf.notification_filter()
        #: The claim as this connection runs it, with ``PGCELERY_NOTIFICATION_FILTER``.
        self.claim_statement = sql.claim("true")
        #: The EXECUTE of each statement prepared in this session (``sql.prepared``).
        self._executes: dict[str, str] = {}

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def connect(self, pg_channels: Iterable[str]) -> None:
        """Opens the connection and LISTENs on ``pg_channels``, if wake-ups can reach it.

        Through a transaction pooler (pgbouncer's transaction mode) they cannot: each
        transaction may run in another server session. Then the connection sets nothing
        that outlives a transaction (no LISTEN, no prepared statement), and ``listening``
        is False: the bridge sweeps. Prepared statements have names of their own: a
        session a pooler hands on to another client holds none of the same name.
        """
        params = connections[self.alias].get_connection_params()
        for key in _DJANGO_ONLY_PARAMS:
            params.pop(key, None)
        params.setdefault("connect_timeout", 10)
        # A peer gone without a word (a host down, a cut path) is noticed within a minute.
        for key, value in KEEPALIVES.items():
            params.setdefault(key, value)
        params["application_name"] = APPLICATION_NAME
        self._params = params
        self._connection = self._open(params)
        self._check_privileges()
        self._receive_wakeups()
        self.listening = self._wakeups_arrive(params)
        self.claim_statement = sql.claim(self._where())
        if not self.listening:
            return
        token = secrets.token_hex(8)
        statements = [self.claim_statement, *sql.PREPARED]
        forms = [sql.prepared(f"pgcelery_{token}_{n}", statement)
                 for n, statement in enumerate(statements)]
        with self.transaction():
            for prepare, _ in forms:
                self.run(prepare)
            for pg_channel in pg_channels:
                self.run(sql.listen(pg_channel))
        # LISTEN takes effect at commit: committed before the first claim, so no
        # notification committed after that claim can go unnoticed.
        self._executes = {statement: execute
                          for statement, (_, execute) in zip(statements, forms, strict=True)}

    def _where(self) -> str:
        """``PGCELERY_NOTIFICATION_FILTER`` as SQL with its values written in, or ``true``."""
        if self.notification_filter is None:
            return "true"
        condition, params = filters.condition(self.notification_filter, self.alias)
        with self._connection.cursor() as cursor:
            return self._mogrify(cursor, condition, params)

    def _check_privileges(self) -> None:
        """Raises MissingPrivileges naming what the role lacks, before anything is claimed:
        a bridge that could publish but not delete would publish the same rows forever."""
        with self.transaction():
            missing = self.run(sql.MISSING_PRIVILEGES)
            [(role,)] = self.run("SELECT current_user")
        if not missing:
            return
        self.close()
        tables = sorted({name for name, privilege in missing if privilege is None})
        if tables:
            raise MissingPrivileges(
                f"Database {self.alias!r} has no {', '.join(tables)}: run "
                "`python manage.py migrate` first."
            )
        lacking = ", ".join(f"{privilege} on {name}" for name, privilege in missing)
        raise MissingPrivileges(
            f"The bridge's role {role!r} lacks {lacking} in database {self.alias!r}. Grant "
            "the bridge role's privileges listed in the README (Privileges), e.g. "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {sql.OUTBOX}, {sql.DELIVERIES} TO "
            f"{role}; GRANT USAGE ON SEQUENCE {sql.OUTBOX}_id_seq TO {role}; "
            f"GRANT SELECT, DELETE ON {sql.TASK_RECORDS} TO {role}; "
            f"GRANT SELECT, INSERT, DELETE ON {sql.BATCHES} TO {role};"
        )

    def _wakeups_arrive(self, params: dict[str, Any]) -> bool:
        """Whether a wake-up sent from another connection reaches this one.

        A probe channel of its own, LISTENed in one transaction and notified from a new
        connection: on a direct or session-pooled connection it arrives at once; through a
        transaction pooler the session that LISTENed is another client's by then.
        """
        probe = f"pgcelery_probe_{secrets.token_hex(8)}"
        with self.transaction():
            self.run(sql.listen(probe))
        sender = self._open({**params, "application_name": PROBE_APPLICATION_NAME})
        try:
            with sender.cursor() as cursor:
                cursor.execute(sql.WAKE, [probe])
        finally:
            sender.close()
        deadline = time.monotonic() + PROBE_SECONDS
        while not any(channel == probe for channel, _ in self._wakeups):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            select.select([self], [], [], remaining)
            self._read_wakeups()
        self._wakeups = [wakeup for wakeup in self._wakeups if wakeup[0] != probe]
        with self.transaction():
            self.run(sql.unlisten(probe))
        return True

    def close(self) -> None:
        for connection in (self._connection, self._apart):
            if connection is not None:
                with contextlib.suppress(*self.errors):
                    connection.close()
        self._connection = self._apart = None
        self._wakeups.clear()
        self._executes = {}

    def fileno(self) -> int:
        """The connection's socket, to wait on with ``select``."""
        return int(self._connection.fileno())

    def wakeups(self) -> list[Wakeup]:
        """The wake-ups received since the last call, read off the socket without blocking.

        Those that arrived during a claim are included: their rows may have committed
        after it.
        """
        self._read_wakeups()
        taken, self._wakeups = self._wakeups, []
        return taken

    def ping(self) -> None:
        """Raises one of ``errors`` if the connection is lost.

        For a socket that was readable but gave no wake-up: psycopg2 reads the end of a
        closed connection without an error, and only a query finds out.
        """
        with self.transaction():
            self.run(sql.PING)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Commits what ran inside, or rolls it back on any exception.

        The connection is in autocommit mode and the transaction's edges travel with its
        statements: BEGIN with the first one run, COMMIT with those deferred to it, so a
        claim takes two round trips to the server, not four. With a ``watchdog``, a
        transaction that outlives ``PGCELERY_DATABASE_TIMEOUT`` has its connection shut
        down: the driver raises one of ``errors``.
        """
        self._begun, self._deferred = False, []
        with self._guarded(self.fileno):
            try:
                yield
                if self._begun or self._deferred:
                    self.run("COMMIT")
            except BaseException:
                if self._begun and self._connection is not None and not self._connection.closed:
                    self._deferred = []  # not sent: the transaction is undone
                    with contextlib.suppress(*self.errors):
                        self.run("ROLLBACK")
                raise
            finally:
                self._begun, self._deferred = False, None

    def _guarded(self, fileno: Callable[[], int]) -> contextlib.AbstractContextManager[None]:
        """The watchdog's guard of a call on the socket ``fileno()``, if there is a watchdog."""
        if self.watchdog is None:
            return contextlib.nullcontext()
        return self.watchdog.guard(fileno, self.timeout, f"Database {self.alias!r}")

    def run(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Runs ``statement`` after the statements deferred before it and returns its rows;
        the first statement of a transaction begins it. A statement prepared in this
        session runs as its EXECUTE."""
        with self._connection.cursor() as cursor:
            text = self._text(cursor, statement, params)
            if self._deferred is not None:
                before = ([] if self._begun else ["BEGIN"]) + self._deferred
                text = "; ".join([*before, text])
                self._begun, self._deferred = True, []
            cursor.execute(text)
            return self._rows(cursor)

    def defer(self, statement: str, params: Any) -> None:
        """Sends ``statement`` with the transaction's next statement or its COMMIT: for
        those whose result is not read."""
        if self._deferred is None:
            raise RuntimeError("A deferred statement runs in a transaction only.")
        with self._connection.cursor() as cursor:
            self._deferred.append(self._text(cursor, statement, params))

    def _text(self, cursor: Any, statement: str, params: Any) -> str:
        """``statement`` as sent: its EXECUTE where it is prepared, ``params`` bound."""
        statement = self._executes.get(statement, statement)
        return statement if params is None else self._mogrify(cursor, statement, params)

    def run_apart(self, statement: str, params: Any) -> None:
        """Runs and commits ``statement`` on a connection of its own, whatever becomes of the
        transaction in progress: what must outlive a claim that dies with its bridge."""
        try:
            if self._apart is None:
                self._apart = self._open({**self._params,
                                          "application_name": APART_APPLICATION_NAME})
            with self._guarded(self._apart.fileno), self._apart.cursor() as cursor:
                cursor.execute(statement, params)
        except self.errors:
            with contextlib.suppress(*self.errors):
                if self._apart is not None:
                    self._apart.close()
            self._apart = None
            raise

    @abc.abstractmethod
    def _open(self, params: dict[str, Any]) -> Any:
        """A new driver connection from Django's connection parameters."""

    @staticmethod
    @abc.abstractmethod
    def _mogrify(cursor: Any, statement: str, params: Any) -> str:
        """``statement`` with ``params`` bound, as the driver would send it."""

    @staticmethod
    @abc.abstractmethod
    def _rows(cursor: Any) -> list[tuple[Any, ...]]:
        """The rows of the last statement the cursor ran (none if it returns none)."""

    @abc.abstractmethod
    def _receive_wakeups(self) -> None:
        """Makes the wake-ups the driver reads during queries reach ``self._wakeups``."""

    @abc.abstractmethod
    def _read_wakeups(self) -> None:
        """Moves the wake-ups waiting on the socket into ``self._wakeups``."""


class Psycopg2Connector(Connector):
    def __init__(self, alias: str) -> None:
        import psycopg2

        super().__init__(alias)
        self._psycopg2 = psycopg2
        self.errors = (psycopg2.OperationalError, psycopg2.InterfaceError)

    def _open(self, params: dict[str, Any]) -> Any:
        connection = self._psycopg2.connect(**params)
        connection.autocommit = True
        return connection

    @staticmethod
    def _mogrify(cursor: Any, statement: str, params: Any) -> str:
        return str(cursor.mogrify(statement, params).decode())

    @staticmethod
    def _rows(cursor: Any) -> list[tuple[Any, ...]]:
        # psycopg2 keeps the result of the last statement of a query.
        return list(cursor.fetchall()) if cursor.description is not None else []

    def _receive_wakeups(self) -> None:
        """psycopg2 keeps them in ``notifies``, which ``_read_wakeups`` empties."""

    def _read_wakeups(self) -> None:
        # psycopg2 keeps what it read during queries in ``notifies``, too.
        self._connection.poll()
        self._wakeups.extend((n.channel, n.payload) for n in self._connection.notifies)
        self._connection.notifies.clear()


class PsycopgConnector(Connector):
    """psycopg 3, with client-side binding so the claim's ``EXECUTE`` takes parameters."""

    def __init__(self, alias: str) -> None:
        import psycopg

        super().__init__(alias)
        self._psycopg = psycopg
        self.errors = (psycopg.OperationalError, psycopg.InterfaceError)

    def _open(self, params: dict[str, Any]) -> Any:
        return self._psycopg.connect(
            **params, cursor_factory=self._psycopg.ClientCursor, prepare_threshold=None,
            autocommit=True,
        )

    @staticmethod
    def _mogrify(cursor: Any, statement: str, params: Any) -> str:
        return str(cursor.mogrify(statement, params))

    @staticmethod
    def _rows(cursor: Any) -> list[tuple[Any, ...]]:
        # psycopg 3 keeps a result per statement of a query: the last one is read.
        while cursor.nextset():
            pass
        return list(cursor.fetchall()) if cursor.description is not None else []

    def _receive_wakeups(self) -> None:
        # Called for the wake-ups psycopg reads while it runs a query.
        self._connection.add_notify_handler(
            lambda notify: self._wakeups.append((notify.channel, notify.payload))
        )

    def _read_wakeups(self) -> None:
        pgconn = self._connection.pgconn
        pgconn.consume_input()
        while (notify := pgconn.notifies()) is not None:
            self._wakeups.append((notify.relname.decode(), notify.extra.decode()))


def connector_for(alias: str) -> Connector:
    """A connector for database ``alias``, on the driver Django uses for it."""
    return PsycopgConnector(alias) if is_psycopg3 else Psycopg2Connector(alias)
