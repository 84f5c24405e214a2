"""Talking to the broker: one connection, each listener's route worked out once.

Messages are the task messages Celery sends (``app.amqp.create_task_message`` and
``send_task_message``, what ``send_task`` uses), without what only a caller awaiting a
result needs: the bridge never subscribes to results nor links tasks to a parent. On a
Redis broker, plain routes skip kombu's per-message publishing (see ``redis_lists``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import typing
from collections.abc import Iterator
from typing import Any

import kombu.exceptions
from celery import Celery, current_app, signals
from kombu import Connection, Producer, Queue

from pgcelery import celery_internals, conf, messages, redis_lists, tracing
from pgcelery.registry import Listener

logger = logging.getLogger(__name__)


#: Socket timeouts of the bridge's broker connection, by kombu transport, unless
#: ``broker_transport_options`` sets them: a broker that stops answering fails a publish
#: (the rows stay, the bridge backs off) instead of blocking the bridge for good.
BROKER_TIMEOUTS: dict[str, dict[str, float]] = {
    "redis": {"socket_timeout": 10.0, "socket_connect_timeout": 10.0},
    "amqp": {"read_timeout": 10.0, "write_timeout": 10.0},
}
#: Broker operations buffered before a batch is sent early.
BATCH_OPERATIONS = 5000
#: Options (the listener's, or its task's own) that belong in the message itself rather
#: than in its routing.
_MESSAGE_OPTIONS = ("countdown", "expires", "time_limit", "soft_time_limit", "ignore_result")
#: Receivers of these run for each message Celery sends; messages for them go through it.
_PUBLISH_SIGNALS = ("before_task_publish", "after_task_publish", "task_sent")
#: The routing options of a route whose messages can go straight to a Redis list.
_PLAIN_OPTIONS = {"queue", "serializer", "delivery_mode"}


class BrokerUnavailable(Exception):
    """The broker refused or lost the connection; nothing after it was published."""


class MessageRefused(Exception):
    """The broker refused one message (e.g. over its size limit) and took the others."""


def celery_app() -> Celery:
    """The Celery app of the project: ``PGCELERY_CELERY_APP`` or the current app."""
    return conf.celery_app() or typing.cast(Celery, celery_internals.current(current_app))


@dataclasses.dataclass(frozen=True)
class RedisList:
    """A queue's Redis list, and how messages written straight to it are encoded."""

    queue: str
    serializer: str
    delivery_mode: Any
    #: The route's messages, to be filled in, unless they cannot be (see ``Template.of``).
    template: redis_lists.Template | None


@dataclasses.dataclass
class Route:
    """Where and how one listener's tasks are sent, as ``send_task`` would work it out."""

    app: Celery
    task_name: str
    message_options: dict[str, Any]
    send_options: dict[str, Any]
    #: The listener's ``redeliver_after``, resolved.
    redeliver_after: float | None = None
    #: Set when the route allows writing the messages straight to the queue's Redis list.
    redis_list: RedisList | None = None

    def message(self, task_id: str, kwargsrepr: str, kwargs: dict[str, Any]) -> Any:
        """The task message of one run, as ``send_task`` builds it."""
        return celery_internals.create_message(self.app, task_id, self.task_name, kwargs,
                                               argsrepr="()", kwargsrepr=kwargsrepr,
                                               **self.message_options)


class Publisher:
    """Sends task messages on one broker connection, opened lazily and again after a failure.

    Publisher confirms are asked for (AMQP brokers honour them, Redis ignores the option),
    so a send returns only once the broker has the message. Inside ``batch``, a
    transport that can pipeline (Redis) sends the messages together.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._routes: dict[Listener, Route] = {}
        self._lists: redis_lists.ListWriter | None = None
        #: ``time.monotonic()`` when the broker last answered: a batch sent, or a ping.
        self.reached_at = 0.0

    def publish(self, delivery: messages.Delivery, database: str) -> None:
        """Sends (or, inside ``batch``, buffers) the task message of ``delivery``.

        Raises:
            BrokerUnavailable: if the broker cannot be reached.
            MessageRefused: if the broker refused this message; the next one is sent on a
                new channel.
        """
        listener, row = delivery.listener, delivery.row
        with self._broker_errors(refusals=True):
            route = self._route(listener)
            what = (f"notification {row.id}" if listener.batch is None
                    else f"{len(delivery.rows)} notification(s) from {row.id}")
            # What monitoring (Flower, celery events) shows of the arguments: which
            # notification, not its data, which is no monitoring system's business and
            # would travel outside a signed message's body. Also spares a repr of it.
            kwargsrepr = f"{{{messages.ENVELOPE!r}: <{what} on {row.channel}>}}"
            envelope = delivery.envelope(database, route.redeliver_after)
            trace = _trace(delivery)
            target, lists = route.redis_list, self._lists
            if target is not None and lists is not None and target.template is not None:
                lists.add(target.queue, target.template.render(
                    delivery.task_id, kwargsrepr, envelope, lists.tag(), trace))
                return
            message = route.message(delivery.task_id, kwargsrepr, {messages.ENVELOPE: envelope})
            if trace is not None:
                message.headers.update(trace)
            if target is not None and lists is not None:
                lists.add(target.queue, celery_internals.redis_wire_message(
                    lists.channel, message, target.queue, target.serializer,
                    target.delivery_mode, lists.tag()))
            else:
                with tracing.parent(trace):
                    celery_internals.send_message(self.app, self._open(), listener.task_name,
                                                  message, **route.send_options)

    def ping(self) -> None:
        """Asks the broker for one round trip (Redis and AMQP; other transports are taken
        to be up until a publish fails).

        Raises:
            BrokerUnavailable: if the broker cannot be reached.
        """
        with self._broker_errors():
            channel: Any = self._open().channel
            if redis_lists.supports(channel):
                celery_internals.redis_ping(channel)
            elif typing.cast(Connection, self._connection).transport.driver_type == "amqp":
                # A passive declare of an exchange every AMQP broker has.
                channel.exchange_declare(exchange="amq.direct", type="direct", passive=True)
            self.reached_at = time.monotonic()

    @contextlib.contextmanager
    def grouped(self) -> Iterator[None]:
        """Groups the publishes made inside (one pipeline, not a listener's batch); all of
        them reached the broker when it exits.

        Raises:
            BrokerUnavailable: if the broker cannot be reached; some of the messages may
                have been sent.
        """
        with self._broker_errors():
            producer = self._open()
            grouped = (producer.batch(max_size=BATCH_OPERATIONS) if hasattr(producer, "batch")
                       else contextlib.nullcontext())
            if redis_lists.supports(producer.channel):
                self._lists = redis_lists.ListWriter(producer.channel)
            try:
                with grouped:
                    yield
                    if self._lists is not None:
                        self._lists.flush()
                self.reached_at = time.monotonic()
            finally:
                self._lists = None

    def _route(self, listener: Listener) -> Route:
        route = self._routes.get(listener)
        if route is None:
            route = self._routes[listener] = self._resolve(listener)
        return route

    def _resolve(self, listener: Listener) -> Route:
        """Merges the task's own options under the listener's, then asks Celery's router."""
        task = self.app.tasks.get(listener.task_name)
        defaults = celery_internals.exec_options(task) if task is not None else {}
        options = {key: value for key, value in defaults.items() if value is not None}
        options.update(listener.options)
        message_options = {key: options.pop(key) for key in _MESSAGE_OPTIONS if key in options}
        # Looked up once: Celery reads each through the Django settings.
        message_options.update(celery_internals.message_identity(self.app),
                               create_sent_event=self.app.conf.task_send_sent_event)
        expires = message_options.get("expires")
        if isinstance(expires, (int, float)):
            options["expiration"] = max(expires, 0)
        options = celery_internals.route(self.app, options, listener.task_name, task)
        countdown = message_options.get("countdown")
        if isinstance(countdown, (int, float)) and countdown >= 1:  # else Celery refuses it
            self._open()
            driver_type = typing.cast(Connection, self._connection).transport.driver_type
            options = celery_internals.native_delayed_options(
                self.app, driver_type, options, countdown) or options
        queue = options.get("queue")
        if queue is not None and not queue.no_declare:
            # A broadcast queue is each consumer's own: a queue declared here would keep a
            # copy of every message, read by nobody. Its exchange is what is published to.
            fanout = queue.exchange.type == "fanout"
            self._open().maybe_declare(queue.exchange if fanout else queue)
        route = Route(self.app, listener.task_name, message_options, options,
                      listener.redelivery_period())
        if queue is not None and self._plain(options, queue):
            serializer = options.get("serializer") or self.app.conf.task_serializer
            delivery_mode = (options.get("delivery_mode") or queue.exchange.delivery_mode
                             or self.app.conf.task_default_delivery_mode)
            template = redis_lists.Template.of(self._open().channel, route.message,
                                               messages.ENVELOPE, queue.name, serializer,
                                               delivery_mode)
            route.redis_list = RedisList(queue.name, serializer, delivery_mode, template)
        return route

    def _plain(self, options: dict[str, Any], queue: Queue) -> bool:
        """Whether messages of a route can go straight to a Redis list: a queue reached
        through the default exchange, no priority, expiry or compression, and nothing
        (signal receivers, sent events) that Celery runs for each message it sends.
        OpenTelemetry's receivers do not count: the message carries the writer's trace."""
        return (
            redis_lists.supports(self._open().channel)
            and set(options) <= _PLAIN_OPTIONS
            and queue.exchange.type == "direct"
            and not self.app.conf.task_compression
            and not self.app.conf.task_send_sent_event
            and not any(not tracing.is_instrumentation(receiver)
                        for name in _PUBLISH_SIGNALS if hasattr(signals, name)
                        for receiver in celery_internals.signal_receivers(getattr(signals, name)))
        )

    @contextlib.contextmanager
    def _broker_errors(self, refusals: bool = False) -> Iterator[None]:
        """Turns the broker's errors into BrokerUnavailable, closing the connection.

        With ``refusals``, a channel error (AMQP closes the channel of a message it refuses,
        e.g. ``406 PRECONDITION_FAILED`` over its size limit) is MessageRefused instead.
        """
        try:
            yield
        except (BrokerUnavailable, MessageRefused):
            raise
        except Exception as exc:
            connection = self._connection
            connection_errors: tuple[type[BaseException], ...] = (
                kombu.exceptions.OperationalError,)
            channel_errors: tuple[type[BaseException], ...] = ()
            if connection is not None:
                connection_errors += connection.connection_errors
                channel_errors = connection.channel_errors
            if not isinstance(exc, connection_errors + channel_errors):
                raise
            self.close()
            if refusals and not isinstance(exc, connection_errors):
                raise MessageRefused(f"the broker refused the message: {exc}") from exc
            raise BrokerUnavailable(str(exc)) from exc

    def _open(self) -> Producer:
        if self._producer is None:
            connection = self.app.connection_for_write(transport_options=self._transport_options())
            # Fail fast: the bridge has its own backoff, and keeps its rows meanwhile.
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            self._connection = connection
            self._producer = celery_internals.producer(self.app, connection)
        return self._producer

    def _transport_options(self) -> dict[str, Any]:
        """The transport's socket timeouts under ``broker_transport_options``, and
        publisher confirms."""
        driver = self.app.connection_for_write().transport.driver_type
        return {**BROKER_TIMEOUTS.get(driver, {}), **self.app.conf.broker_transport_options,
                "confirm_publish": True}

    def close(self) -> None:
        if self._connection is not None:
            self._connection.collect()
        self._connection = self._producer = None
        self._routes.clear()


def _trace(delivery: messages.Delivery) -> dict[str, str] | None:
    """The trace headers of the delivery's first notification that has any: a task has one
    parent, and a batch's notifications may come from several writers."""
    for row in delivery.rows:
        found = tracing.headers(row.context)
        if found is not None:
            return found
    return None
