"""What the bridge tells about itself over HTTP: Prometheus metrics and a health probe.

The counters are kept by the bridge as it publishes. The backlog (pending rows, the oldest
one's age, failed rows) is read from the databases every ``BACKLOG_INTERVAL`` seconds
by the bridge's loop, never per batch nor per scrape, so a scrape costs PostgreSQL nothing.
Whether the databases and the broker are up, and when the loop last turned, is read from
the bridge when asked. The server runs in a thread of its own; it never touches a database
or the broker.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pgcelery import messages

logger = logging.getLogger(__name__)

#: How often the bridge reads the backlog gauges from its databases, at most.
BACKLOG_INTERVAL = 5.0
#: Commit → broker accepted, in seconds: from a busy bridge's milliseconds to an outage.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 300.0, 900.0, 3600.0)


@dataclasses.dataclass
class Backlog:
    """One channel's rows: pending notifications, the oldest one's age in seconds (None when
    none is pending), failed rows."""

    pending: int = 0
    oldest_pending_seconds: float | None = None
    failed: int = 0

    def add(self, pending: int, oldest_pending_seconds: float | None, failed: int) -> None:
        """Adds another database's rows of the same channel."""
        self.pending += pending
        self.failed += failed
        ages = [age for age in (self.oldest_pending_seconds, oldest_pending_seconds)
                if age is not None]
        self.oldest_pending_seconds = max(ages, default=None)


@dataclasses.dataclass(frozen=True)
class DependencyState:
    """A database or the broker, as the bridge last found it."""

    kind: str  # "database" or "broker"
    name: str
    up: bool
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}".rstrip()


@dataclasses.dataclass(frozen=True)
class State:
    """The bridge as the probe sees it."""

    dependencies: list[DependencyState]
    #: Seconds since the bridge's loop last turned or finished a batch.
    idle_seconds: float
    #: Seconds after which a loop that has not turned counts as stuck.
    stuck_after: float


class Metrics:
    """The bridge's metrics, in a registry of their own (several bridges in one process,
    as in tests, do not mix theirs)."""

    def __init__(self, served_channels: Iterable[str], state: Callable[[], State],
                 address: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.state = state
        #: Where ``serve`` serves them.
        self.address, self.port = address, port
        self._published = Counter(
            "pgcelery_published", "Notifications published to the broker, by listener task.",
            ["channel", "listener"], registry=self.registry)
        self._delay = Histogram(
            "pgcelery_publish_delay_seconds",
            "From the writer's transaction to the broker accepting the notification's tasks.",
            buckets=DELAY_BUCKETS, registry=self.registry)
        self._served = list(served_channels)
        #: The last rows read from each database: (channel, pending, oldest age, failed).
        self._backlogs: dict[str, list[tuple[Any, ...]]] = {}
        #: The last counts read from each database: (channel, listener, waiting).
        self._waiting: dict[str, list[tuple[str, str, int]]] = {}
        self.registry.register(_Gauges(self))

    def published(self, deliveries: Iterable[messages.Delivery], claimed: float) -> None:
        """Counts deliveries the broker accepted and committed as sent; ``claimed`` is the
        ``time.monotonic()`` of their claim, whose rows carry their age at that moment."""
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        seen: set[tuple[int, int]] = set()
        waited = time.monotonic() - claimed
        for delivery in deliveries:
            counts[delivery.row.channel, delivery.listener.task_name] += len(delivery.rows)
            for row in delivery.rows:
                if (row.id, row.position) not in seen:
                    seen.add((row.id, row.position))
                    self._delay.observe(row.age + waited)
        for (channel, listener), count in counts.items():
            self._published.labels(channel, listener).inc(count)

    def set_backlog(self, database: str, rows: list[tuple[Any, ...]]) -> None:
        """Keeps what ``database``'s outbox holds now (``Connector.backlog``); a database
        that cannot be read keeps its last figures."""
        self._backlogs[database] = rows

    def set_waiting(self, database: str, counts: list[tuple[str, str, int]]) -> None:
        """Keeps how many notifications wait for their keys in ``database`` now."""
        self._waiting[database] = counts

    def waiting(self) -> dict[tuple[str, str], int]:
        """Per (channel, listener), the notifications waiting for their keys, summed over
        the databases."""
        total: collections.Counter[tuple[str, str]] = collections.Counter()
        for counts in list(self._waiting.values()):
            for channel, listener, count in counts:
                total[channel, listener] += count
        return dict(total)

    def backlog(self) -> dict[str, Backlog]:
        """Each channel's rows summed over the databases; a channel this bridge serves shows
        0 when none of its rows is left."""
        total = {channel: Backlog() for channel in self._served}
        for rows in list(self._backlogs.values()):
            for channel, *counts in rows:
                total.setdefault(channel, Backlog()).add(*counts)
        return total

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the bridge serves, and the probe's JSON body saying so or why not."""
        state = self.state()
        reasons = [f"{dependency.label} unreachable: {dependency.error}"
                   for dependency in state.dependencies if not dependency.up]
        if state.idle_seconds > state.stuck_after:
            reasons.append(f"the bridge has made no progress for {state.idle_seconds:.0f} s "
                           f"(more than {state.stuck_after:.0f} s)")
        body: dict[str, Any] = {
            "status": "unavailable" if reasons else "ok",
            "dependencies": {dependency.label: "up" if dependency.up else "down"
                             for dependency in state.dependencies},
            "loop_idle_seconds": round(state.idle_seconds, 3),
        }
        if reasons:
            body["reason"] = "; ".join(reasons)
        return not reasons, body


class _Gauges(Collector):
    """The gauges read when scraped: the last backlog read, and the dependencies."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backlog = self.metrics.backlog()
        pending = GaugeMetricFamily("pgcelery_pending", "Notifications not yet published.",
                                    labels=["channel"])
        oldest = GaugeMetricFamily(
            "pgcelery_oldest_pending_seconds",
            "Age of the oldest notification not yet published (0 when none is).",
            labels=["channel"])
        failed = GaugeMetricFamily("pgcelery_failed", "Failed notifications kept in the outbox.",
                                   labels=["channel"])
        for channel, counts in sorted(backlog.items()):
            pending.add_metric([channel], counts.pending)
            oldest.add_metric([channel], counts.oldest_pending_seconds or 0.0)
            failed.add_metric([channel], counts.failed)
        waiting = GaugeMetricFamily(
            "pgcelery_waiting", "Notifications of listeners with key options waiting for their "
            "key or a slot.", labels=["channel", "listener"])
        for (channel, listener), count in sorted(self.metrics.waiting().items()):
            waiting.add_metric([channel, listener], count)
        up = GaugeMetricFamily("pgcelery_up", "Whether the bridge reaches the dependency.",
                               labels=["dependency"])
        dependencies = self.metrics.state().dependencies
        for kind in ("database", "broker"):
            up.add_metric([kind], float(all(dependency.up for dependency in dependencies
                                            if dependency.kind == kind)))
        yield from (pending, oldest, failed, waiting, up)


class _QuietHandler(WSGIRequestHandler):
    """Leaves access logs to the scraper: a request every few seconds is noise."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(metrics: Metrics) -> WSGIServer:
    """Serves ``/metrics`` and ``/health`` on the metrics' address and port from a daemon
    thread.

    Raises:
        OSError: if the port cannot be bound.
    """
    exposition = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return exposition(environ, start_response)
        if path == "/health":
            serving, body = metrics.health()
            start_response("200 OK" if serving else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not found: pgcelery's bridge serves /metrics and /health.\n"]

    address, port = metrics.address, metrics.port
    server = make_server(address, port, app, server_class=_Server6 if ":" in address else _Server,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="pgcelery-metrics", daemon=True).start()
    logger.info("Serving /metrics and /health on http://%s:%d", address, port)
    return server
