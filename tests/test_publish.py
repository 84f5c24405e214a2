"""The publisher against the real broker: what it writes, and where."""

import contextlib
import json
import uuid

import pytest
import redis
from celery import current_app, shared_task, signals

from pgcelery import messages, redis_lists
from pgcelery.publish import Publisher
from pgcelery.registry import Listener
from tests import support

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not current_app.conf.broker_url.startswith("redis"),
                       reason="Redis lists only"),
]

MESSAGE = Listener("tests.testapp.listeners.message_received", "tests.testapp.channels.Message",
                   "")


@shared_task(name="tests.test_publish.limited", time_limit=60, soft_time_limit=30)
def limited(text: str) -> None:
    """A task with options of its own."""


@pytest.fixture(autouse=True)
def empty_queues():
    support.purge_queues()
    yield
    support.purge_queues()


def row(n: int) -> messages.Row:
    return messages.Row(n, 0, uuid.uuid4(), MESSAGE.channel, "", json.dumps({"text": f"m{n}"}),
                        None)


def publish(listener: Listener, rows: list[messages.Row]) -> Publisher:
    publisher = Publisher(current_app._get_current_object())
    try:
        with publisher.batch():
            for each in rows:
                publisher.publish(messages.Delivery(listener, f"task-{each.id}", [each]),
                                  "default")
    finally:
        publisher.close()
    return publisher


def raw_messages(queue: str) -> list[dict]:
    """The JSON documents in a queue's Redis list, oldest first."""
    client = redis.Redis.from_url(current_app.conf.broker_url)
    return [json.loads(item) for item in reversed(client.lrange(queue, 0, -1))]


@contextlib.contextmanager
def publish_receiver():
    """A before_task_publish receiver: Celery must then send every message itself."""
    seen = []

    def receiver(headers, **_):
        seen.append(headers["id"])

    signals.before_task_publish.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        signals.before_task_publish.disconnect(receiver)


def without_delivery_tag(document: dict) -> dict:
    properties = {k: v for k, v in document["properties"].items() if k != "delivery_tag"}
    return {**document, "properties": properties}


def test_redis_lists_get_exactly_what_kombu_would_write():
    rows = [row(n) for n in (1, 2, 3)]
    publish(MESSAGE, rows)
    direct = raw_messages("celery")
    support.purge_queues()
    with publish_receiver() as seen:
        publish(MESSAGE, rows)
    assert seen == ["task-1", "task-2", "task-3"]
    through_kombu = raw_messages("celery")
    assert [without_delivery_tag(d) for d in direct] == [
        without_delivery_tag(d) for d in through_kombu
    ]
    assert len({d["properties"]["delivery_tag"] for d in direct}) == 3
    assert [d["headers"]["id"] for d in direct] == ["task-1", "task-2", "task-3"]


def test_messages_written_to_lists_are_read_back_in_order_by_kombu():
    rows = [row(n) for n in range(1, redis_lists.MAX_MESSAGES + 3)]
    publish(MESSAGE, rows)
    taken = support.take_messages("celery")
    assert [m.headers["id"] for m in taken] == [f"task-{r.id}" for r in rows]
    assert taken[-1].decode()[1][messages.ENVELOPE]["payload"] == rows[-1].payload


def test_the_tasks_own_options_are_on_its_messages_as_with_apply_async():
    listener = Listener("tests.test_publish.limited", MESSAGE.channel, "", {"queue": "stats"})
    publish(listener, [row(1)])
    [message] = support.take_messages("stats")
    assert message.headers["task"] == "tests.test_publish.limited"
    assert message.headers["timelimit"] == [60, 30]
