"""The bridge: LISTEN, claim a batch of outbox rows, publish their tasks, delete the rows.

A row (one notification, or a chunk of a bulk write's) is deleted in the same transaction
that claimed it, after the broker accepted its messages; a crash before the commit leaves it
to be published again, with the same task ids. ``FOR UPDATE SKIP LOCKED`` lets any number
of bridges drain one outbox without dispatching a row twice. A sweep on a timer covers any
missed wake-up.

One bridge drains the outboxes of several databases, each in a thread of its own with its
own connector (connection, LISTEN, transactions, backoff) and broker connection: a database
that goes down, or hangs without an answer, leaves the others served.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import signal
import socket
import threading
import time
import typing
from collections.abc import Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from celery import Celery
from django.core.exceptions import ImproperlyConfigured

from pgcelery import conf, dispatch, keys, messages, metrics, registry
from pgcelery.channels import pg_channel
from pgcelery.connector import Connector, connector_for
from pgcelery.dispatch import Failure, Formed
from pgcelery.publish import BrokerUnavailable, MessageRefused, Publisher
from pgcelery.redelivery import Redelivery
from pgcelery.store import DatabaseStore, OutboxStore, Remembered, Scope
from pgcelery.watchdog import Watchdog

logger = logging.getLogger(__name__)

#: How often ``atomic=True`` task records and finished deliveries past their retention
#: are pruned.
PRUNE_INTERVAL = 3600.0
#: Seconds a transaction in flight may still take once a stop signal arrived.
STOP_GRACE = 10.0


class Backoff:
    """Exponential delays from ``first`` up to ``ceiling`` seconds, reset on success."""

    def __init__(self, ceiling: float, first: float = 0.5) -> None:
        self.ceiling, self.first = ceiling, first
        self.failures = 0

    def next_delay(self) -> float:
        """The delay after one more failure. Once at the ceiling the exponent stops growing,
        so an outage of any length never overflows it."""
        delay = min(self.ceiling, self.first * 2**self.failures)
        if delay < self.ceiling:
            self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class Dependency:
    """A database or the broker as the bridge sees it: up, or down until ``retry_at``."""

    def __init__(self, kind: str, name: str, max_backoff: float) -> None:
        self.kind, self.name = kind, name
        self.backoff = Backoff(max_backoff)
        self.retry_at = 0.0
        #: Why it is down, or None while it is up.
        self.error: str | None = None
        #: The broker is shared by the threads of every database.
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.error is not None

    def failed(self, exc: Exception) -> None:
        """Logs the outage once, and puts off the next attempt by the backoff's delay."""
        with self._lock:
            if not self.down:
                logger.error("%s unavailable (%s); retrying with backoff.", self.label, exc)
            self.error = str(exc) or type(exc).__name__
            self.retry_at = time.monotonic() + self.backoff.next_delay()

    def succeeded(self) -> None:
        with self._lock:
            if self.down:
                logger.info("%s available again.", self.label)
                self.error = None
            self.backoff.reset()
            self.retry_at = 0.0

    @property
    def label(self) -> str:
        label = self.state().label
        return label[0].upper() + label[1:]

    def state(self) -> metrics.DependencyState:
        return metrics.DependencyState(self.kind, self.name, not self.down, self.error)


class ClaimSize:
    """How much one claim takes: up to ``rows`` notifications and ``budget`` decoded bytes,
    divided by two each time a claim ran past the database timeout (the watchdog ended its
    transaction, so all its rows would be published again, and again), and multiplied back
    by two after each claim that took under a quarter of the timeout."""

    def __init__(self, rows: int, budget: int) -> None:
        self.rows, self.budget = rows, budget
        self.divisor = 1

    @property
    def limits(self) -> tuple[int, int]:
        """The notifications and decoded bytes the next claim may take."""
        return max(1, self.rows // self.divisor), max(1, self.budget // self.divisor)

    def overran(self) -> None:
        if self.rows // self.divisor > 1:  # else a claim takes one row already
            self.divisor *= 2

    def took(self, seconds: float, timeout: float) -> None:
        if self.divisor > 1 and seconds < timeout / 4:
            self.divisor //= 2


class Outbox:
    """The outbox of one database as the bridge drains it: its connection, what the bridge
    reads and changes through it, and its broker connection."""

    def __init__(self, connector: Connector, publisher: Publisher, max_backoff: float,
                 claim: ClaimSize, store: OutboxStore | None = None) -> None:
        self.connector = connector
        self.store = store or DatabaseStore(connector)
        self.alias = connector.alias
        self.publisher = publisher
        self.claim = claim
        self.health = Dependency("database", repr(connector.alias), max_backoff)
        #: When the backlog gauges were last read from the database.
        self.observed_at: float | None = None
        #: When its loop last turned or finished a batch.
        self.progressed_at = time.monotonic()
        #: When to claim next without a wake-up; 0 is at once.
        self.sweep_at = 0.0
        #: When the next unfinished delivery of a ``redeliver_after`` listener is due.
        self.redeliver_at = 0.0
        #: When to release every key without a drain: at once after a wake-up that names no
        #: delivery, or one refused the turn, else when the next debounced notification is
        #: due (a drain releases too).
        self.release_at = 0.0
        #: Task ids of deliveries of keyed listeners a worker said finished, since the last
        #: release: the next one looks at their keys (or at all, if a full one is due).
        self.freed: set[str] = set()
        #: When its last release began, and how long after it the next that workers'
        #: wake-ups ask waits (see ``keys.RELEASE_GAP``).
        self.released_at = -math.inf
        self.release_gap = 0.0
        self.pruned_at: float | None = None

    def next_turn(self) -> float:
        if not self.connector.connected:
            return self.health.retry_at
        return min(self.sweep_at, self.redeliver_at, self.release_at, self.freed_release_at())

    def freed_release_at(self) -> float:
        """When to release the keys workers freed: at once, but not sooner than the gap
        after the last release."""
        return self.released_at + self.release_gap if self.freed else math.inf

    def remembered(self, deliveries: Sequence[Remembered]) -> None:
        """Looks for unfinished deliveries again when the first of ``deliveries``, just
        remembered, may be due."""
        if deliveries:
            soonest = time.monotonic() + min(period for _, period in deliveries)
            self.redeliver_at = min(self.redeliver_at, soonest)

    def lost(self, exc: Exception) -> None:
        """Closes the connection that failed with ``exc``; it is retried at the backoff."""
        self.connector.close()
        self.health.failed(exc)


class Bridge:
    """Turns the outboxes of one or more databases into Celery task messages until stopped."""

    def __init__(
        self,
        app: Celery,
        *,
        databases: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
        batch_size: int | None = None,
        sweep_interval: float | None = None,
        metrics_port: int | None = None,
        metrics_address: str | None = None,
    ) -> None:
        max_backoff = conf.max_backoff()
        aliases = list(databases) if databases else conf.databases()
        self.batch_size = batch_size or conf.batch_size()
        self.batch_bytes = conf.batch_bytes()
        self.outboxes = [
            Outbox(connector_for(alias), Publisher(app), max_backoff,
                   ClaimSize(self.batch_size, self.batch_bytes))
            for alias in aliases]
        self.watchdog = Watchdog(self._stop_asked, STOP_GRACE)
        for outbox in self.outboxes:
            outbox.connector.watchdog = self.watchdog
        self.channels = list(channels) if channels else None
        self.scope = Scope.of(registry.registered_listeners(), self.channels,
                              conf.unknown_grace())
        self.sweep_interval = sweep_interval or conf.sweep_interval()
        served = [listener for listener in registry.registered_listeners()
                  if self.channels is None or listener.channel in self.channels]
        #: Only where a listener served here has ``redeliver_after``: if none, no delivery
        #: is remembered, and none is looked for.
        self.redelivery = Redelivery(
            self.channels, self.batch_size, self.sweep_interval, self._send,
            lambda: self.stopping,
        ) if any(listener.redelivery_period() is not None for listener in served) else None
        #: The task names of the listeners with ``batch`` served here, whose batches are
        #: formed once, for good (a keyed listener's, when released).
        self.batch_listeners = sorted(listener.task_name for listener in served
                                      if listener.batch is not None and listener.keys is None)
        keyed = [listener for listener in served if listener.keys is not None]
        #: Only where a listener served here has key options.
        self.release = keys.Release(keyed, self.batch_size, self._send) if keyed else None
        self.broker = Dependency("broker", "", max_backoff)
        self.stopping = False
        #: Served on ``/metrics`` and ``/health``, if anywhere.
        port = metrics_port or conf.metrics_port()
        self.metrics = None if port is None else metrics.Metrics(
            self.channels or registry.registered_channels(), self.state,
            metrics_address or conf.metrics_address(), port)
        #: ``/health`` reports a bridge stuck once a database's loop made no progress for
        #: this long. With metrics on, each loop ticks every ``BACKLOG_INTERVAL`` at the
        #: latest, and a transaction takes up to the database timeout before the watchdog
        #: ends it.
        self.stuck_after = 2 * (metrics.BACKLOG_INTERVAL + conf.database_timeout())
        # Signals write to _wake_w (set_wakeup_fd), so a stop ends any wait at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        #: What a database's loop raised that it could not handle; ``run`` raises it.
        self._crash: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Serves until SIGTERM or SIGINT; finishes the batch in hand, then returns."""
        server = self._serve_metrics()
        previous = self._install_signal_handlers()
        logger.info(
            "Bridge started on %s %s for %s.",
            "database" if len(self.outboxes) == 1 else "databases",
            ", ".join(repr(outbox.alias) for outbox in self.outboxes),
            ", ".join(self.channels) if self.channels else "all channels",
        )
        threads = [threading.Thread(target=self._serve, args=(outbox,), daemon=True,
                                    name=f"pgcelery-bridge-{outbox.alias}")
                   for outbox in self.outboxes]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():  # a timeout, so that signal handlers run meanwhile
                    thread.join(1.0)
        finally:
            self.stop()
            if server is not None:
                server.shutdown()
                server.server_close()
            self.close()
            self._restore_signal_handlers(previous)
        if self._crash is not None:
            raise self._crash
        logger.info("Bridge stopped.")

    def _serve(self, outbox: Outbox) -> None:
        """The loop of one database's thread; an error it cannot handle stops the bridge
        and is raised by ``run``."""
        try:
            while not self._stop_asked():
                self._turn(outbox)
                self._tick(outbox)
                self._wait(outbox, self._next_turn(outbox) - time.monotonic())
        except BaseException as exc:
            self._crash = exc
            self.stop()

    def stop(self, *_: object) -> None:
        """Asks every database's loop to stop, ending their waits."""
        self.stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _stop_asked(self) -> bool:
        """Whether a stop signal arrived, even if its handler has not run yet: it wrote to
        the wake-up socket, which this peeks at without taking the byte."""
        try:
            return self.stopping or bool(self._wake_r.recv(1, socket.MSG_PEEK))
        except (BlockingIOError, OSError):
            return False

    def connect(self) -> None:
        """Connects every outbox now, raising what a connection raises."""
        for outbox in self.outboxes:
            self._connect(outbox)

    def close(self) -> None:
        """Closes the database and broker connections."""
        for outbox in self.outboxes:
            outbox.connector.close()
            outbox.publisher.close()

    def _install_signal_handlers(self) -> dict[Any, Any]:
        previous: dict[Any, Any] = {
            sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        previous["fd"] = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[Any, Any]) -> None:
        signal.set_wakeup_fd(previous.pop("fd"))
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    # -- one turn per outbox -----------------------------------------------------------

    def _turn(self, outbox: Outbox) -> None:
        """Drains ``outbox`` if a sweep or a wake-up is due, reconnecting first if its
        connection was lost; releases what waits for keys after a drain, or when a key was
        freed."""
        now = time.monotonic()
        if now < outbox.next_turn() or now < self.broker.retry_at:
            return
        try:
            if not outbox.connector.connected:
                self._connect(outbox)
                outbox.sweep_at = 0.0  # wake-ups were lost meanwhile
            drained = now >= outbox.sweep_at
            if drained:
                self._drain(outbox)
            full = drained or now >= outbox.release_at
            if self.release is not None and (full or now >= outbox.freed_release_at()):
                self._release(outbox, full)
            if self.redelivery is not None:
                self.redelivery.if_due(outbox)
            self._prune_if_due(outbox)
        except outbox.connector.errors as exc:
            outbox.lost(exc)
            return
        except BrokerUnavailable as exc:
            self.broker.failed(exc)
            return
        outbox.health.succeeded()
        if outbox.publisher.reached_at >= now:  # else the broker was not asked
            self.broker.succeeded()
        if drained:
            outbox.sweep_at = time.monotonic() + self.sweep_interval

    def _connect(self, outbox: Outbox) -> None:
        names = self.channels or registry.registered_channels()
        outbox.connector.connect(pg_channel(name) for name in names)
        if not outbox.connector.listening:
            logger.warning(
                "Database %r: wake-ups do not reach the bridge (LISTEN does not work through "
                "a transaction pooler such as pgbouncer in transaction mode), so it sweeps the "
                "outbox every %.1f s instead. Connect the bridge to PostgreSQL directly or "
                "through session pooling.", outbox.alias, self.sweep_interval)

    def _next_turn(self, outbox: Outbox) -> float:
        turn = max(outbox.next_turn(), self.broker.retry_at)
        if self.metrics is not None and outbox.observed_at is not None:
            turn = min(turn, outbox.observed_at + metrics.BACKLOG_INTERVAL)
        return turn

    # -- telling about itself ----------------------------------------------------------

    def state(self) -> metrics.State:
        """What ``/health`` and ``pgcelery_up`` report; read from the server's thread."""
        slowest = min(outbox.progressed_at for outbox in self.outboxes)
        return metrics.State(
            [outbox.health.state() for outbox in self.outboxes] + [self.broker.state()],
            time.monotonic() - slowest, self.stuck_after)

    def _serve_metrics(self) -> WSGIServer | None:
        if self.metrics is None:
            return None
        try:
            return metrics.serve(self.metrics)
        except OSError as exc:
            address, port = self.metrics.address, self.metrics.port
            raise ImproperlyConfigured(
                f"The bridge cannot serve metrics on {address}:{port} (PGCELERY_METRICS_PORT, "
                f"--metrics-port; PGCELERY_METRICS_ADDRESS, --metrics-address): {exc}. "
                "Choose a free port, or an address of this machine.") from exc

    def _tick(self, outbox: Outbox) -> None:
        """Notes progress, and refreshes the metrics if due: after every batch and every turn
        of the loop, so a long catch-up shows as it goes."""
        outbox.progressed_at = time.monotonic()
        self._observe_if_due(outbox)

    def _observe_if_due(self, outbox: Outbox) -> None:
        """Reads the backlog gauges from the database, and asks the broker whether it is up
        (an idle bridge would not find out otherwise), every ``BACKLOG_INTERVAL`` seconds."""
        now = time.monotonic()
        if self.metrics is None or (outbox.observed_at is not None
                                    and now < outbox.observed_at + metrics.BACKLOG_INTERVAL):
            return
        outbox.observed_at = now
        if outbox.connector.connected:
            try:
                self.metrics.set_backlog(outbox.alias, outbox.store.backlog())
                if self.release is not None:
                    self.metrics.set_waiting(outbox.alias, outbox.store.waiting_counts())
            except outbox.connector.errors as exc:
                outbox.lost(exc)
        try:
            outbox.publisher.ping()
        except BrokerUnavailable as exc:
            self.broker.failed(exc)
        else:
            self.broker.succeeded()

    # -- waiting -----------------------------------------------------------------------

    def _wait(self, outbox: Outbox, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for a wake-up of ``outbox``, or a stop; returns
        whether a wake-up came.

        A woken outbox is due at once. Wake-ups read off the socket while a batch ran end
        the wait at once, since their rows may have committed after the batch's claim.
        """
        connected = outbox.connector.connected
        if connected and self._woken(outbox):
            return True
        if timeout <= 0 or connected and not outbox.connector.connected:
            return False  # a connection lost while reading wake-ups: its retry may be sooner
        waiting: list[Any] = [self._wake_r, *([outbox.connector] if connected else [])]
        ready, _, _ = select.select(waiting, [], [], timeout)
        return outbox.connector in ready and self._woken(outbox, readable=True)

    def _connected(self) -> list[Outbox]:
        return [outbox for outbox in self.outboxes if outbox.connector.connected]

    def _woken(self, outbox: Outbox, readable: bool = False) -> bool:
        """Reads the outbox's wake-ups; a socket that was ``readable`` for nothing is
        checked, since that is how a lost connection shows."""
        try:
            wakeups = outbox.connector.wakeups()
            if readable and not wakeups:
                outbox.connector.ping()
        except outbox.connector.errors as exc:
            outbox.lost(exc)
            return False
        for woken_channel, payload in wakeups:
            task_id = keys.freed_task(payload)
            if task_id:  # only a release is due: nothing new in the outbox
                outbox.freed.add(task_id)
                continue
            if task_id == "":
                outbox.release_at = 0.0
                continue
            if payload:
                logger.warning("Ignored a wake-up with an unexpected payload on channel "
                               "%r: %.200r", woken_channel, payload)
            outbox.sweep_at = 0.0
        return bool(wakeups)

    # -- draining ----------------------------------------------------------------------

    def drain(self) -> int:
        """Publishes every pending row of every connected outbox; returns how many it handled."""
        return sum(self._drain(outbox) for outbox in self._connected())

    def _drain(self, outbox: Outbox) -> int:
        handled = 0
        more = True
        while more and not self.stopping:
            count, more = self._batch(outbox)
            handled += count
            self._tick(outbox)
        return handled

    def _batch(self, outbox: Outbox) -> tuple[int, bool]:
        """Publishes one claim's notifications; returns how many, and whether more wait."""
        store, timeout = outbox.store, outbox.connector.timeout
        claimed = time.monotonic()
        limit, budget = outbox.claim.limits
        try:
            with store.transaction():
                rows, formed, left = self._claim(outbox, limit, budget)
                failed, sent = self._dispatch_all(rows, outbox, formed)
                store.fail(failed)
                if rows:
                    store.delete(row.id for row in rows)
        except store.errors:
            if time.monotonic() - claimed >= timeout:
                outbox.claim.overran()
                logger.warning(
                    "Database %r: a claim of up to %d notification(s) and %d byte(s) ran past "
                    "PGCELERY_DATABASE_TIMEOUT (%.1f s); the next claims take half as much.",
                    outbox.alias, limit, budget, timeout)
            raise
        outbox.claim.took(time.monotonic() - claimed, timeout)
        if self.metrics is not None and sent:
            self.metrics.published(sent, claimed)
        if len(rows) > len(failed):
            logger.info("Published %d notification(s).", len(rows) - len(failed))
        return len(rows), left or len(rows) >= limit

    def _claim(self, outbox: Outbox, limit: int,
               budget: int) -> tuple[list[messages.Row], list[Formed], bool]:
        """Claims pending rows, and the batches earlier claims formed of their notifications.

        Those batches go whole or not at all: the rows of theirs this claim's limits left
        out are claimed too, and the rows of one that another claim holds in part are left
        pending. Returns the rows, the batches, and whether pending rows were left out.
        """
        store = outbox.store
        rows, left = store.claim(limit, budget, self.scope)
        if not rows or not self.batch_listeners:
            return rows, [], left
        formed: dict[str, Formed] = {}
        looked_up: set[int] = set()
        while unseen := {row.id for row in rows} - looked_up:
            looked_up |= unseen
            formed.update((batch.task_id, batch)
                          for batch in store.formed_batches(unseen, self.batch_listeners))
            wanted = {row_id for batch in formed.values() for row_id, _ in batch.members}
            if wanted - looked_up:
                rows = sorted([*rows, *store.claim_rows(wanted - looked_up)],
                              key=lambda row: row.id)
        # Rows left to the claim that holds the rest of their batch are not looked at again
        # at once: that claim leaves them too, or publishes the batch.
        whole, leave = dispatch.complete(formed.values(), rows)
        return [row for row in rows if row.id not in leave], whole, left

    def _dispatch_all(
        self, rows: list[messages.Row], outbox: Outbox, formed: Sequence[Formed] = (),
    ) -> tuple[list[Failure], list[messages.Delivery]]:
        """Publishes the rows' tasks; returns (id, position, reason) of the notifications
        that failed, and the deliveries sent.

        The batches formed here are committed before any message leaves, so that a claim
        that finds their notifications again sends the same batches; the deliveries of
        ``redeliver_after`` listeners are remembered, and the notifications of listeners with
        key options parked to wait for their keys, in the claim's transaction.
        """
        failed: list[Failure] = []
        sent: list[messages.Delivery] = []
        if not rows:
            return failed, sent
        parked: list[tuple[registry.Listener, messages.Row]] = []
        deliveries = dispatch.deliveries(rows, failed, formed, parked)
        outbox.store.park(parked)
        batches = [delivery for delivery in deliveries
                   if delivery.listener.batch is not None and delivery.row.task_id is None]
        again = {batch.task_id for batch in formed}
        outbox.store.form([batch for batch in batches if batch.task_id not in again])
        periods = {listener: listener.redelivery_period()
                   for listener in {delivery.listener for delivery in deliveries}}
        remembered = [(delivery, period) for delivery in deliveries
                      if (period := periods[delivery.listener]) is not None]
        outbox.store.remember(remembered)
        with outbox.publisher.grouped():
            for delivery in deliveries:
                reason = self._send(delivery, outbox)
                if reason is None:
                    sent.append(delivery)
                else:
                    failed.extend(dispatch.failure(row, reason) for row in delivery.rows)
        # A failed notification goes again to all its listeners once retried.
        failed_rows = {(row_id, position) for row_id, position, _ in failed}
        outbox.store.forget([
            delivery.task_id for delivery, _ in remembered
            if any((row.id, row.position) in failed_rows for row in delivery.rows)])
        outbox.store.unform([batch.task_id for batch in batches])
        outbox.remembered(remembered)
        return failed, sent

    def _release(self, outbox: Outbox, full: bool) -> None:
        """Publishes the waiting notifications that their keys allow now: of every key if
        ``full``, else of those just freed."""
        started = outbox.released_at = time.monotonic()
        sent = typing.cast(keys.Release, self.release).turn(outbox, full)
        if self.metrics is not None and sent:
            self.metrics.published(sent, started)
        if sent:
            logger.info("Released %d delivery(ies) waiting for their keys.", len(sent))

    def _send(self, delivery: messages.Delivery, outbox: Outbox) -> str | None:
        """Publishes the delivery's task; returns why it cannot be, or None once done."""
        name = delivery.listener.task_name
        try:
            outbox.publisher.publish(delivery, outbox.alias)
        except BrokerUnavailable:
            raise
        except MessageRefused as exc:
            return f"publishing task {name} failed: {exc}"
        except Exception as exc:  # a message the serializer rejects
            return f"publishing task {name} failed: {exc!r}"
        if logger.isEnabledFor(logging.DEBUG):  # the fields cost, per message
            logger.debug("Notification %d on %s -> task %s[%s]", delivery.row.id,
                         delivery.row.channel, name, delivery.task_id,
                         extra=dispatch.log_fields(delivery.row, delivery.task_id, name))
        return None

    def _prune_if_due(self, outbox: Outbox) -> None:
        now = time.monotonic()
        if outbox.pruned_at is not None and now - outbox.pruned_at < PRUNE_INTERVAL:
            return
        outbox.store.prune(conf.atomic_retention())
        outbox.pruned_at = now
