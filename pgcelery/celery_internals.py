"""Every use of Celery's and kombu's non-public interfaces, in one place.

The rest of pgcelery uses their public APIs. Each function here rests on one assumption
about a Celery or kombu release, pinned by a test in ``tests/test_celery_internals.py``
(the Redis wire format in ``tests/test_publish.py``, against what kombu itself writes),
which ``make test`` and ``make test-oldest`` run on the newest and the oldest supported
releases: when a release breaks one, that test names it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery import _state as celery_state
from celery.local import Proxy
from celery.utils.nodenames import anon_nodename
from kombu import Exchange, serialization
from kombu.entity import maybe_delivery_mode
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

# -- apps --------------------------------------------------------------------------------


def is_fallback_app(app: Celery) -> bool:
    """Whether ``app`` is the app Celery makes up when none was created or made current.

    Assumes Celery creates it as ``Celery('default', fixups=[], set_as_current=False)`` and
    keeps it as ``celery._state.default_app``.
    """
    fallback = getattr(celery_state, "default_app", None)
    return app is fallback and app.main == "default" and not app.fixups


def db_reuse_max(app: Celery) -> Any:
    """``CELERY_DB_REUSE_MAX`` as Celery's Django fixup reads it: unset, the worker closes
    the database connections after every task.

    Assumes the fixup reads ``app.conf.get('CELERY_DB_REUSE_MAX')``.
    """
    return app.conf.get("CELERY_DB_REUSE_MAX")


def current(proxy: Any) -> Any:
    """The object behind a Celery proxy (``current_app``, a ``shared_task``).

    Assumes ``celery.local.Proxy._get_current_object()``.
    """
    return proxy._get_current_object() if isinstance(proxy, Proxy) else proxy


def signal_receivers(signal: Any) -> list[Callable[..., Any]]:
    """The live receivers connected to a Celery signal, for any sender.

    Assumes ``Signal.receivers`` lists (lookup key, receiver or weak reference to it).
    """
    found = []
    for _key, receiver in signal.receivers:
        if isinstance(receiver, weakref.ReferenceType):
            receiver = receiver()
        if receiver is not None:
            found.append(receiver)
    return found


# -- tasks -------------------------------------------------------------------------------


def replace_run(task: Task, run: Callable[..., Any]) -> None:
    """Makes ``run`` what the worker calls for ``task``.

    Assumes the worker's tracer calls the instance's ``run`` (for tasks without a custom
    ``__call__``), looked up when the tracer is built, after the listeners are imported.
    """
    task.run = run  # type: ignore[method-assign]


def replace_apply_async(task: Task, apply_async: Callable[..., Any]) -> None:
    """Makes ``apply_async`` what ``task.delay()``, ``task.apply_async()`` and the task's
    signatures send through.

    Assumes ``Task.delay`` calls ``self.apply_async`` and ``Signature.apply_async`` calls
    the task instance's ``apply_async``, so an attribute of the instance overrides both.
    """
    task.apply_async = apply_async  # type: ignore[method-assign]


def skip_argument_check(task: Task, skip: Callable[[dict[str, Any]], bool]) -> None:
    """Lets ``apply_async`` send keyword arguments for which ``skip(kwargs)`` holds unchecked.

    Assumes ``Task.apply_async`` checks arguments (``typing=True``) by calling the
    task's ``__header__``, a stand-in with the signature of the task's function.
    """
    check = getattr(task, "__header__", None)
    if check is None:
        return

    def check_unless_skipped(*args: Any, **kwargs: Any) -> Any:
        return None if skip(kwargs) else check(*args, **kwargs)

    task.__header__ = check_unless_skipped  # type: ignore[attr-defined]


def exec_options(task: Task) -> dict[str, Any]:
    """The options a task sets for its own messages (``queue``, ``priority``, ...).

    Assumes ``Task._get_exec_options()``, which ``apply_async`` merges under the caller's.
    """
    return dict(task._get_exec_options())  # type: ignore[attr-defined]


# -- messages ----------------------------------------------------------------------------


def message_identity(app: Celery) -> dict[str, Any]:
    """The sender's fields of a task message, as ``send_task`` fills them.

    Assumes ``app.thread_oid`` (the reply-to address) and ``anon_nodename()`` (the origin).
    """
    return {"reply_to": app.thread_oid, "origin": anon_nodename()}


def route(app: Celery, options: dict[str, Any], name: str, task: Task | None) -> dict[str, Any]:
    """The send options of task ``name`` (its queue, exchange, routing key), as ``send_task``
    routes a message, for keyword arguments only.

    Assumes ``app.amqp.router.route(options, name, args, kwargs, task)``.
    """
    routed: dict[str, Any] = app.amqp.router.route(
        options, name, (), {}, task)  # type: ignore[arg-type]
    return routed


def producer(app: Celery, connection: Any) -> Any:
    """The producer ``send_task`` publishes with, on ``connection``.

    Assumes ``app.amqp.Producer(connection)``.
    """
    return app.amqp.Producer(connection)


def create_message(app: Celery, task_id: str, name: str, kwargs: dict[str, Any],
                   **options: Any) -> Any:
    """A task message of protocol 2, as ``send_task`` builds it.

    Assumes ``app.amqp.create_task_message(task_id, name, args, kwargs, **options)``.
    """
    return app.amqp.create_task_message(task_id, name, (), kwargs, **options)


def send_message(app: Celery, producer: Any, name: str, message: Any, **options: Any) -> None:
    """Publishes a message made by ``create_message``, as ``send_task`` does.

    Assumes ``app.amqp.send_task_message(producer, name, message, retry=, declare=, **route)``.
    """
    app.amqp.send_task_message(producer, name, message, retry=False, declare=[], **options)


#: The exchange ``Celery.send_task`` publishes a delayed message to, for RabbitMQ's native
#: delayed delivery (Celery >= 5.5, quorum queues).
NATIVE_DELAYED_EXCHANGE = "celery_delayed_27"


def native_delayed_options(app: Celery, driver_type: str, options: dict[str, Any],
                           countdown: float) -> dict[str, Any] | None:
    """The routed send options of a message ``countdown`` seconds ahead, rewritten as
    ``send_task`` rewrites them to go through RabbitMQ's native delayed delivery; None
    where it would not (Celery < 5.5, no quorum queue, another broker, a direct exchange).

    Assumes ``celery.utils.quorum_queues.detect_quorum_queues(app, driver_type)``,
    ``kombu.transport.native_delayed_delivery.calculate_routing_key(countdown, key)`` and
    the topic exchange :data:`NATIVE_DELAYED_EXCHANGE`, used as ``Celery.send_task`` uses
    them: the queue option dropped, the exchange and routing key replaced.
    """
    try:
        from celery.utils.quorum_queues import detect_quorum_queues
        from kombu.transport.native_delayed_delivery import calculate_routing_key
    except ImportError:  # Celery < 5.5: no native delayed delivery
        return None
    if not detect_quorum_queues(app, driver_type)[0]:
        return None
    queue = options.get("queue")
    exchange_type = queue.exchange.type if queue is not None else options.get("exchange_type")
    if exchange_type == "direct":
        return None
    routing_key = queue.routing_key if queue is not None else options["routing_key"]
    delayed = {key: value for key, value in options.items() if key != "queue"}
    delayed.update(routing_key=calculate_routing_key(int(countdown), routing_key),
                   exchange=Exchange(NATIVE_DELAYED_EXCHANGE, type="topic"))
    return delayed


# -- kombu's Redis transport ---------------------------------------------------------------


def is_redis_channel(channel: Any) -> bool:
    """Whether ``channel`` is a kombu Redis channel (plain, TLS or Sentinel)."""
    return isinstance(channel, kombu_redis.Channel)


def redis_wire_message(channel: Any, message: Any, queue: str, serializer: str,
                       delivery_mode: Any, delivery_tag: str) -> str:
    """``message`` as kombu's Redis transport stores it in the list of ``queue``.

    Assumes the JSON layout ``kombu.transport.redis.Channel._put`` writes for a message
    published through the default exchange: body encoded by the channel's body encoding,
    properties with delivery info, priority 0 and a delivery tag.
    """
    content_type, content_encoding, body = serialization.dumps(message.body, serializer)
    body, body_encoding = channel.encode_body(body, channel.body_encoding)
    return dumps({
        "body": body,
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": message.headers,
        "properties": {
            **message.properties,
            "delivery_mode": maybe_delivery_mode(delivery_mode),
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": body_encoding,
            "delivery_tag": delivery_tag,
        },
    })


def redis_ping(channel: Any) -> None:
    """One round trip to the Redis server of a kombu Redis channel.

    Assumes the channel's redis-py client as ``channel.client``.
    """
    channel.client.ping()


def redis_body_encoder(channel: Any) -> Callable[[str], str]:
    """How the channel encodes a message body in the documents it stores.

    Assumes ``channel.encode_body(text, channel.body_encoding)`` returning (body, encoding).
    """
    def encode(text: str) -> str:
        encoded: str = channel.encode_body(text, channel.body_encoding)[0]
        return encoded

    return encode


def redis_push(channel: Any, lists: dict[str, list[str]]) -> None:
    """LPUSHes each list's wire messages in one pipelined round trip, on kombu's client.

    Assumes ``channel.conn_or_acquire()``, which applies kombu's key prefix and Sentinel.
    """
    with channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
        for queue, wires in lists.items():
            pipe.lpush(queue, *wires)
        pipe.execute()
