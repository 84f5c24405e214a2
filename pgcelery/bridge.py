"""The bridge: LISTEN, claim a batch of outbox rows, publish their tasks, delete the rows.

A row (one notification, or a chunk of a bulk write's) is deleted in the same transaction
that claimed it, after the broker accepted its messages; a crash before the commit leaves it
to be published again, with the same task ids. ``FOR UPDATE SKIP LOCKED`` lets any number
of bridges drain one outbox without dispatching a row twice. A sweep on a timer covers any
missed wake-up.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import time
from collections.abc import Sequence

import psycopg2
from celery import Celery
from django.db import connections
from psycopg2 import sql as pgsql

from pgcelery import channels, conf, listeners, messages, sql
from pgcelery.publish import BrokerUnavailable, Publisher

logger = logging.getLogger(__name__)

#: How often ``atomic=True`` task records past their retention are pruned.
PRUNE_INTERVAL = 3600.0
_DRIVER_ONLY_PARAMS = ("context", "cursor_factory", "prepare_threshold")
#: How the bridge's connection shows in pg_stat_activity.
APPLICATION_NAME = "pgcelery_bridge"


class Backoff:
    """Exponential delays from ``first`` up to ``ceiling`` seconds, reset on success."""

    def __init__(self, ceiling: float, first: float = 0.5) -> None:
        self.ceiling, self.first = ceiling, first
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return min(self.ceiling, self.first * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


class Bridge:
    """Turns the outbox of one database into Celery task messages until stopped."""

    def __init__(
        self,
        app: Celery,
        *,
        database: str | None = None,
        channels: Sequence[str] | None = None,
        batch_size: int | None = None,
        sweep_interval: float | None = None,
    ) -> None:
        self.database = database or conf.database()
        self.channels = list(channels) if channels else None
        self.batch_size = batch_size or conf.batch_size()
        self.sweep_interval = sweep_interval or conf.sweep_interval()
        self.publisher = Publisher(app)
        self.pg: psycopg2.extensions.connection | None = None
        self.stopping = False
        # Signals write to _wake_w (set_wakeup_fd), so a stop ends any wait at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._last_prune = 0.0
        self._outage: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Serves until SIGTERM or SIGINT; finishes the batch in hand, then returns."""
        previous = self._install_signal_handlers()
        backoff = Backoff(conf.max_backoff())
        logger.info(
            "Bridge started on database %r for %s.",
            self.database,
            ", ".join(self.channels) if self.channels else "all channels",
        )
        try:
            while not self.stopping:
                try:
                    self._serve(backoff)
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    self._close_database()
                    self._report_outage("database", exc)
                    self._sleep(backoff.next_delay())
                except BrokerUnavailable as exc:
                    self._report_outage("broker", exc)
                    self._sleep(backoff.next_delay())
        finally:
            self.close()
            self._restore_signal_handlers(previous)
        logger.info("Bridge stopped.")

    def stop(self, *_: object) -> None:
        self.stopping = True

    def _install_signal_handlers(self):
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous["fd"] = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        signal.set_wakeup_fd(previous.pop("fd"))
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _report_outage(self, what: str, exc: Exception) -> None:
        if self._outage != what:
            logger.error("%s unavailable (%s); retrying with backoff.", what.capitalize(), exc)
            self._outage = what

    def _recovered(self, backoff: Backoff) -> None:
        if self._outage is not None:
            logger.info("%s available again.", self._outage.capitalize())
            self._outage = None
        backoff.reset()

    def _sleep(self, seconds: float) -> None:
        """Sleeps, waking early for a stop signal."""
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            select.select([self._wake_r], [], [], left)
            self._drain_wakeups()

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    # -- database ----------------------------------------------------------------------

    def connect(self) -> None:
        """Opens the database connection and LISTENs on the served channels."""
        params = connections[self.database].get_connection_params()
        for key in _DRIVER_ONLY_PARAMS:
            params.pop(key, None)
        params.setdefault("connect_timeout", 10)
        params["application_name"] = APPLICATION_NAME
        self.pg = psycopg2.connect(**params)
        names = self.channels or listeners.registered_channels()
        with self.pg.cursor() as cursor:
            cursor.execute(sql.BRIDGE_SESSION)
            cursor.execute(sql.PREPARE_CLAIM)
            for name in names:
                cursor.execute(pgsql.SQL("LISTEN {}").format(
                    pgsql.Identifier(channels.pg_channel(name))))
        # LISTEN takes effect at commit: committed before the first read of the outbox,
        # so no notification committed after that read can go unnoticed.
        self.pg.commit()

    def close(self) -> None:
        """Closes the database and broker connections."""
        self._close_database()
        self.publisher.close()

    def _close_database(self) -> None:
        if self.pg is not None and not self.pg.closed:
            self.pg.close()
        self.pg = None

    def _serve(self, backoff: Backoff) -> None:
        if self.pg is None:
            self.connect()
        while not self.stopping:
            self.drain()
            self._recovered(backoff)
            self._prune_if_due()
            self._wait(self.sweep_interval)

    def _wait(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for a wake-up; returns whether one came.

        Wake-ups read off the socket while a batch ran are already in ``notifies``: they
        end the wait at once, since their rows may have committed after the batch's claim.
        """
        if not self.pg.notifies:
            ready, _, _ = select.select([self.pg, self._wake_r], [], [], timeout)
            if self._wake_r in ready:
                self._drain_wakeups()
            if self.pg in ready:
                self.pg.poll()
        woken = bool(self.pg.notifies)
        for notify in self.pg.notifies:
            if notify.payload:
                logger.warning(
                    "Ignored a wake-up with an unexpected payload on channel %r: %.200r",
                    notify.channel, notify.payload,
                )
        self.pg.notifies.clear()
        return woken

    # -- draining ----------------------------------------------------------------------

    def drain(self) -> int:
        """Publishes every pending row, batch after batch; returns how many rows it handled."""
        handled = 0
        while not self.stopping:
            count = self._batch()
            handled += count
            if count < self.batch_size:
                break
        return handled

    def _batch(self) -> int:
        try:
            with self.pg.cursor() as cursor:
                cursor.execute(sql.CLAIM, [self.batch_size, self.channels])
                rows = [messages.Row(*row) for row in cursor.fetchall()]
                failed = self._dispatch_all(rows)
                if failed:
                    cursor.execute(sql.FAIL, [list(column) for column in zip(*failed, strict=True)])
                if rows:
                    cursor.execute(sql.DELETE, [sorted({row.id for row in rows})])
            self.pg.commit()
        except BaseException:
            if not self.pg.closed:
                self.pg.rollback()
            raise
        if len(rows) > len(failed):
            logger.info("Published %d notification(s).", len(rows) - len(failed))
        return len(rows)

    def _dispatch_all(self, rows: list[messages.Row]) -> list[tuple[int, int, str]]:
        """Publishes the rows' tasks; returns (id, position, reason) of those that failed."""
        failed: list[tuple[int, int, str]] = []
        if not rows:
            return failed
        with self.publisher.batch():
            for row in rows:
                reason = self._dispatch(row)
                if reason is not None:
                    logger.error("Notification %d on %s failed: %s", row.id, row.channel, reason)
                    failed.append((row.id, row.position, reason))
        return failed

    def _dispatch(self, row: messages.Row) -> str | None:
        """Publishes the row's tasks; returns why it cannot be, or None once done."""
        targets = listeners.listeners_for(row.channel, row.trigger)
        if not targets:
            return _no_listener_reason(row)
        try:
            messages.check(row)
        except (LookupError, TypeError, ValueError) as exc:
            return f"payload cannot be decoded: {exc}"
        for listener in targets:
            task_id = messages.task_id(row, listener.task_name, listener.trigger)
            try:
                self.publisher.publish(listener, row, self.database, task_id)
            except BrokerUnavailable:
                raise
            except Exception as exc:  # a message the broker or serializer rejects
                return f"publishing task {listener.task_name} failed: {exc!r}"
            logger.debug("Notification %d on %s -> task %s[%s]", row.id, row.channel,
                         listener.task_name, task_id)
        return None

    def _prune_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_INTERVAL:
            return
        with self.pg.cursor() as cursor:
            cursor.execute(sql.PRUNE_TASK_RECORDS, [conf.atomic_retention()])
        self.pg.commit()
        self._last_prune = now


def _no_listener_reason(row: messages.Row) -> str:
    if row.channel not in listeners.registered_channels():
        return (
            f"unknown channel {row.channel!r}: no listener is registered for it in this "
            "project; deploy its listeners, then retry the notification, or discard it"
        )
    return (
        f"no listener for trigger {row.trigger!r} of {row.channel}: the trigger's listeners "
        "were removed; retry the notification once they are back, or discard it"
    )
