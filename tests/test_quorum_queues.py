"""Listeners with a countdown on RabbitMQ quorum queues: their messages go through
RabbitMQ's native delayed delivery as ``send_task`` sends them (Celery >= 5.5), not into
the queue at once, where a worker would hold them until their eta."""

import json
import os
import uuid

import pytest
from celery import Celery
from kombu import Exchange, Queue

from pgcelery import celery_internals, messages
from pgcelery.publish import Publisher
from pgcelery.registry import Listener
from tests import support

pytestmark = pytest.mark.integration

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = f"pgcelery.quorum.{os.getpid()}"


@pytest.fixture
def quorum_app():
    if not support.port_open(5672):
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    app = Celery("quorum", set_as_current=False)
    # CELERY_BROKER_URL in the environment overrides broker_url, not these.
    app.conf.broker_read_url = app.conf.broker_write_url = RABBITMQ_URL
    app.conf.task_queues = [Queue(QUEUE, Exchange(QUEUE, type="topic"), routing_key=QUEUE,
                                  queue_arguments={"x-queue-type": "quorum"})]
    yield app
    with app.connection_for_write() as connection:
        channel = connection.channel()
        channel.queue_delete(QUEUE)
        channel.exchange_delete(QUEUE)
        channel.close()


def sent_by_send_task(app: Celery, countdown: float) -> dict:
    """The send options ``send_task`` gives a message of ``countdown`` seconds."""
    sent: dict = {}
    app.amqp.send_task_message = lambda producer, name, message, **options: sent.update(options)
    app.send_task("a.task", countdown=countdown, queue=QUEUE)
    del app.amqp.send_task_message
    return sent


def test_native_delayed_options_are_what_send_task_sends(quorum_app):
    route = quorum_app.amqp.router.route({"queue": QUEUE}, "a.task", (), {}, None)
    ours = celery_internals.native_delayed_options(quorum_app, "amqp", route, 5)
    sent = sent_by_send_task(quorum_app, 5)
    if ours is None:  # Celery < 5.5: the message goes to its queue, with its eta
        assert sent["queue"].name == QUEUE
        return
    assert "queue" not in ours and "queue" not in sent
    assert (ours["exchange"].name, ours["exchange"].type, ours["routing_key"]) == (
        sent["exchange"].name, sent["exchange"].type, sent["routing_key"])
    assert celery_internals.native_delayed_options(quorum_app, "redis", route, 5) is None


def queued(app: Celery) -> int:
    with app.connection_for_write() as connection:
        return connection.default_channel.queue_declare(QUEUE, passive=True).message_count


def test_a_countdown_listeners_message_waits_in_rabbitmq_not_in_the_queue(quorum_app):
    native = pytest.importorskip("kombu.transport.native_delayed_delivery")
    pytest.importorskip("celery.utils.quorum_queues")
    with quorum_app.connection_for_write() as connection:
        # What a Celery worker declares at start when it consumes quorum queues.
        native.declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        queue = quorum_app.amqp.queues[QUEUE]
        queue.maybe_bind(connection.default_channel)
        queue.declare()
        native.bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    listener = Listener("tests.testapp.listeners.message_received",
                        "tests.testapp.channels.Message", "", {"queue": QUEUE, "countdown": 3})
    row = messages.Row(1, 0, uuid.uuid4(), listener.channel, "", json.dumps({"text": "later"}),
                       None)
    publisher = Publisher(quorum_app)
    try:
        with publisher.grouped():
            publisher.publish(messages.Delivery(listener, "delayed-1", [row]), "default")
        assert queued(quorum_app) == 0  # in RabbitMQ's delay queues, for 3 seconds
        support.wait_until(lambda: queued(quorum_app) == 1, timeout=60,
                           what="the delayed message in its queue")
    finally:
        publisher.close()
