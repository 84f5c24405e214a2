"""The database side of the bridge: one connection to one database's outbox.

The bridge connects, LISTENs, waits, claims, fails, deletes and prunes through this small
interface, so its loop never touches a driver. psycopg2 and psycopg 3 each implement the
few calls where they differ; the driver is the one Django uses for the database, so a
project on psycopg 3 needs no psycopg2.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime
import json
import secrets
import select
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from django.db import connections
from django.db.backends.postgresql.psycopg_any import is_psycopg3

from pgcelery import conf, dispatch, filters, messages, sql
from pgcelery.dispatch import Failure, Formed
from pgcelery.registry import Listener
from pgcelery.watchdog import Watchdog

#: Connection parameters Django passes that only its own cursors and adapters use.
_DJANGO_ONLY_PARAMS = ("context", "cursor_factory", "prepare_threshold")
#: How the bridge's connections show in pg_stat_activity.
APPLICATION_NAME = "pgcelery_bridge"
#: The short-lived session that checks whether wake-ups arrive, told apart from the bridge's.
PROBE_APPLICATION_NAME = "pgcelery_bridge_probe"
#: The session that commits the batches a claim forms before their messages leave.
BATCHES_APPLICATION_NAME = "pgcelery_bridge_batches"
#: TCP keepalives of the bridge's connections, unless the database's OPTIONS set them.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}
#: How long a connection waits for its probe wake-up before it concludes none arrive.
PROBE_SECONDS = 2.0

#: A wake-up as received: (pg channel, payload).
Wakeup = tuple[str, str]
#: A delivery of a ``redeliver_after`` listener, and its period in seconds.
Remembered = tuple[messages.Delivery, float]


class MissingPrivileges(Exception):
    """The bridge's database role cannot do its work; it says which grants to add."""


@dataclasses.dataclass(frozen=True)
class Scope:
    """Which pending rows a bridge claims."""

    #: The channels it serves (``--channels``); None: every channel.
    channels: list[str] | None
    #: 'channel|trigger' of every listener it knows.
    known: list[str]
    #: How long rows of a channel or trigger it does not know wait for a bridge that knows
    #: them (a newer release, during a rolling deploy) before it fails them.
    grace: datetime.timedelta

    @classmethod
    def of(cls, listeners: Iterable[Listener], channels: Sequence[str] | None,
           grace: datetime.timedelta) -> Scope:
        known = sorted({f"{listener.channel}|{listener.trigger}" for listener in listeners})
        return cls(list(channels) if channels else None, known, grace)

    def claim_parameters(self, limit: int, budget: int) -> dict[str, Any]:
        """The parameters of ``sql.claim`` for up to ``limit`` notifications and ``budget``
        decoded bytes in this scope."""
        return {"limit": limit, "channels": self.channels, "known": self.known,
                "grace": self.grace, "budget": budget}


def fail_parameters(failures: Sequence[Failure]) -> list[list[Any]]:
    """The parameters of ``sql.FAIL``: the failures' ids, positions and reasons."""
    return [list(column) for column in zip(*failures, strict=True)]


def delete_parameters(ids: Iterable[int]) -> list[list[int]]:
    """The parameters of ``sql.DELETE``."""
    return [sorted(set(ids))]


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
        #: The connection ``form`` commits on, opened when first needed.
        self._side: Any = None
        self._params: dict[str, Any] = {}
        self._wakeups: list[Wakeup] = []
        #: Inside ``transaction``: whether BEGIN was sent, and the statements that wait
        #: to go with its COMMIT.
        self._begun = False
        self._deferred: list[str] | None = None
        self.watchdog: Watchdog | None = None
        self.timeout = conf.database_timeout()
        self.notification_filter = conf.notification_filter()
        self._claim = sql.claim("true")

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def connect(self, pg_channels: Iterable[str]) -> None:
        """Opens the connection and LISTENs on ``pg_channels``, if wake-ups can reach it.

        Through a transaction pooler (pgbouncer's transaction mode) they cannot: each
        transaction may run in another server session. Then the connection sets nothing
        that outlives a transaction (no LISTEN, no prepared claim), and ``listening``
        is False: the bridge sweeps.
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
        where = self._where()
        self._claim = sql.claim(where)
        if not self.listening:
            return
        name = f"pgcelery_claim_{secrets.token_hex(8)}"
        with self.transaction():
            self._run(sql.prepare_claim(name, where))
            for pg_channel in pg_channels:
                self._run(sql.listen(pg_channel))
        # LISTEN takes effect at commit: committed before the first claim, so no
        # notification committed after that claim can go unnoticed.
        self._claim = sql.execute_claim(name)

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
            missing = self._run(sql.MISSING_PRIVILEGES)
            [(role,)] = self._run("SELECT current_user")
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
            self._run(sql.listen(probe))
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
            self._run(sql.unlisten(probe))
        return True

    def close(self) -> None:
        for connection in (self._connection, self._side):
            if connection is not None:
                with contextlib.suppress(*self.errors):
                    connection.close()
        self._connection = self._side = None
        self._wakeups.clear()

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
            self._run(sql.PING)

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
                    self._run("COMMIT")
            except BaseException:
                if self._begun and self._connection is not None and not self._connection.closed:
                    self._deferred = []  # not sent: the transaction is undone
                    with contextlib.suppress(*self.errors):
                        self._run("ROLLBACK")
                raise
            finally:
                self._begun, self._deferred = False, None

    def _guarded(self, fileno: Callable[[], int]) -> contextlib.AbstractContextManager[None]:
        """The watchdog's guard of a call on the socket ``fileno()``, if there is a watchdog."""
        if self.watchdog is None:
            return contextlib.nullcontext()
        return self.watchdog.guard(fileno, self.timeout, f"Database {self.alias!r}")

    def _run(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Runs ``statement`` after the statements deferred before it and returns its rows;
        the first statement of a transaction begins it."""
        with self._connection.cursor() as cursor:
            text = statement if params is None else self._mogrify(cursor, statement, params)
            if self._deferred is not None:
                before = ([] if self._begun else ["BEGIN"]) + self._deferred
                text = "; ".join([*before, text])
                self._begun, self._deferred = True, []
            cursor.execute(text)
            return self._rows(cursor)

    def _defer(self, statement: str, params: Any) -> None:
        """Sends ``statement`` with the transaction's next statement or its COMMIT: for
        those whose result is not read."""
        if self._deferred is None:
            raise RuntimeError("A deferred statement runs in a transaction only.")
        with self._connection.cursor() as cursor:
            self._deferred.append(self._mogrify(cursor, statement, params))

    def claim(self, limit: int, budget: int, scope: Scope) -> tuple[list[messages.Row], bool]:
        """Locks pending rows in ``scope`` holding up to ``limit`` notifications and
        ``budget`` bytes of payload and context as decoded text (one row, whatever its
        size).

        Returns:
            The rows' notifications, and whether pending rows were left for the limits.
        """
        found = self._run(self._claim, scope.claim_parameters(limit, budget))
        return messages.claimed(found), bool(found and found[0][-1])

    def claim_rows(self, ids: Iterable[int]) -> list[messages.Row]:
        """Locks the pending rows ``ids`` that no other claim holds, and returns their
        notifications as ``claim`` does."""
        return messages.claimed(self._run(sql.CLAIM_ROWS, {"ids": sorted(ids)}))

    def formed_batches(self, row_ids: Iterable[int], listeners: Iterable[str]) -> list[Formed]:
        """The batches of ``listeners`` (task names) earlier claims formed of notifications
        of the rows ``row_ids``."""
        found = self._run(sql.FORMED_BATCHES, [sorted(listeners), sorted(row_ids)])
        return [Formed(task_id, listener, tuple(zip(ids, positions, strict=True)))
                for task_id, listener, ids, positions in found]

    def form(self, batches: Sequence[messages.Delivery]) -> None:
        """Keeps the batches about to be published, committed before their messages leave:
        on a connection of its own, since the claim's transaction dies with its bridge."""
        if not batches:
            return
        value = json.dumps([[batch.task_id, batch.listener.task_name, *map(list, zip(
            *dispatch.members(batch), strict=True))] for batch in batches])
        try:
            if self._side is None:
                self._side = self._open({**self._params,
                                         "application_name": BATCHES_APPLICATION_NAME})
            with self._guarded(self._side.fileno), self._side.cursor() as cursor:
                cursor.execute(sql.FORM_BATCHES, [value])
        except self.errors:
            with contextlib.suppress(*self.errors):
                if self._side is not None:
                    self._side.close()
            self._side = None
            raise

    def unform(self, task_ids: Sequence[str]) -> None:
        """Forgets the claim's batches, with its rows."""
        if task_ids:
            self._defer(sql.FORGET_BATCHES, [list(task_ids)])

    def fail(self, failures: Sequence[Failure]) -> None:
        """Keeps the claimed notifications that cannot be dispatched as failed rows."""
        if failures:
            self._defer(sql.FAIL, fail_parameters(failures))

    def delete(self, ids: Iterable[int]) -> None:
        """Deletes the claimed rows, but those ``fail`` has just marked."""
        self._defer(sql.DELETE, delete_parameters(ids))

    def prune(self, retention: datetime.timedelta) -> None:
        """Forgets the ``atomic=True`` task ids and the formed batches older than
        ``retention``, and the deliveries that finished before
        ``conf.FINISHED_DELIVERY_RETENTION``."""
        with self.transaction():
            self._defer(sql.PRUNE_TASK_RECORDS, [retention])
            self._defer(sql.PRUNE_BATCHES, [retention])
            self._defer(sql.PRUNE_DELIVERIES, [conf.FINISHED_DELIVERY_RETENTION])

    def remember(self, deliveries: Sequence[Remembered]) -> None:
        """Remembers deliveries about to be published, until their tasks finish."""
        if not deliveries:
            return
        columns: list[list[Any]] = [[] for _ in range(9)]
        for delivery, seconds in deliveries:
            row = delivery.row
            stored = messages.stored(delivery.rows, delivery.listener.batch is not None)
            for column, value in zip(columns, (delivery.task_id, delivery.listener.task_name,
                                               row.id, row.channel, row.trigger, *stored,
                                               seconds), strict=True):
                column.append(value)
        self._run(sql.REMEMBER_DELIVERIES, columns)

    def forget(self, task_ids: Sequence[str]) -> None:
        """Forgets remembered deliveries whose messages were not sent after all."""
        if task_ids:
            self._defer(sql.FORGET_DELIVERIES, [list(task_ids)])

    def due_deliveries(self, limit: int,
                       channels: Sequence[str] | None) -> list[list[messages.Row]]:
        """Locks up to ``limit`` unfinished deliveries (of ``channels``) due to be published
        again, each as the rows it goes out with: their listener and task id set."""
        names = list(channels) if channels else None
        due: dict[str, list[messages.Row]] = {}
        for (task_id, listener, notification, channel, trigger, payload, context, position,
             seed) in self._run(sql.DUE_DELIVERIES, [names, names, limit]):
            due.setdefault(task_id, []).append(messages.Row(
                notification, position, uuid.UUID(seed) if seed else messages.NO_SEED, channel,
                trigger, payload, context, listener, task_id))
        return list(due.values())

    def redelivered(self, task_ids: Sequence[str]) -> None:
        """Counts a new publish of these deliveries; each is due again a period from now."""
        if task_ids:
            self._defer(sql.REDELIVERED, [list(task_ids)])

    def next_redelivery(self, channels: Sequence[str] | None) -> float | None:
        """Seconds until the next unfinished delivery (of ``channels``) is due, if any."""
        names = list(channels) if channels else None
        with self.transaction():
            [(seconds,)] = self._run(sql.NEXT_REDELIVERY, [names, names])
        return None if seconds is None else float(seconds)

    def backlog(self) -> list[tuple[Any, ...]]:
        """(channel, pending notifications, oldest one's age in seconds or None, failed rows)
        of every channel with rows in the outbox, whichever bridge serves it."""
        with self.transaction():
            return self._run(sql.BACKLOG)

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
