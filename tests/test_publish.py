"""The publisher against the real broker: what it writes, and where."""

import base64
import contextlib
import json
import uuid

import pytest
import redis
from celery import current_app, shared_task, signals

from pgcelery import messages, redis_lists, tracing
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
        with publisher.grouped():
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


def comparable(document: dict) -> dict:
    """A message without what differs from one publish to the next: its delivery tag, and
    the time of a first publish in its envelope (kept as present or not)."""
    properties = {k: v for k, v in document["properties"].items() if k != "delivery_tag"}
    encoded = properties["body_encoding"] == "base64"
    args, kwargs, embed = json.loads(base64.b64decode(document["body"]) if encoded
                                     else document["body"])
    envelope = kwargs[messages.ENVELOPE]
    if "published_at" in envelope:
        envelope["published_at"] = "the publish's time"
    return {**document, "properties": properties, "body": [args, kwargs, embed]}


def template_of(listener: Listener) -> redis_lists.Template | None:
    publisher = Publisher(current_app._get_current_object())
    try:
        return publisher._route(listener).redis_list.template
    finally:
        publisher.close()


def unusual_row(n: int) -> messages.Row:
    """A notification whose payload and context hold what JSON and ``str.format`` escape."""
    text = f'm{n} \u00e9\u4e2d "quoted" {{body}} {{0}} }}{{ \\ \n'
    return messages.Row(n, n, uuid.uuid4(), MESSAGE.channel, "", json.dumps({"text": text}),
                        json.dumps({"tenant": text}))


def traced_row(n: int) -> messages.Row:
    """A notification written in a span: its message carries the writer's trace."""
    trace = {"traceparent": f"00-{n:032x}-{n:016x}-01", "tracestate": "vendor=1"}
    return row(n)._replace(context=json.dumps({"tenant": n, tracing.TRACE_KEY: trace}))


@pytest.mark.parametrize("listener", [
    MESSAGE,
    Listener("tests.test_publish.limited", MESSAGE.channel, "", {"queue": "stats"}),
    Listener(MESSAGE.task_name, MESSAGE.channel, "", redeliver_after=30.5),
], ids=["plain", "task-options", "redeliver-after"])
def test_redis_lists_get_exactly_what_kombu_would_write(listener):
    rows = [row(1), unusual_row(2), traced_row(3)]
    queue = listener.options.get("queue", "celery")
    publish(listener, rows)
    direct = raw_messages(queue)
    support.purge_queues()
    with publish_receiver() as seen:
        publish(listener, rows)
    assert seen == ["task-1", "task-2", "task-3"]
    through_kombu = raw_messages(queue)
    assert [comparable(d) for d in direct] == [
        comparable(d) for d in through_kombu
    ]
    assert len({d["properties"]["delivery_tag"] for d in direct}) == 3
    assert [d["headers"]["id"] for d in direct] == ["task-1", "task-2", "task-3"]
    assert direct[2]["headers"]["traceparent"] == f"00-{3:032x}-{3:016x}-01"
    # Filled in from the route's template, not built by Celery message by message.
    assert template_of(listener) is not None


def test_a_batch_message_from_a_template_is_what_kombu_would_write():
    listener = Listener(MESSAGE.task_name, MESSAGE.channel, "", batch=10)
    rows = [row(1), unusual_row(2)]
    delivery = messages.Delivery.of(listener, rows)

    def published() -> list[dict]:
        publisher = Publisher(current_app._get_current_object())
        try:
            with publisher.grouped():
                publisher.publish(delivery, "default")
        finally:
            publisher.close()
        return [comparable(d) for d in raw_messages("celery")]

    direct = published()
    support.purge_queues()
    with publish_receiver():
        assert published() == direct


def test_a_route_whose_messages_change_by_themselves_is_not_filled_in():
    """A countdown's eta is reckoned when each message is made: no template holds it."""
    listener = Listener(MESSAGE.task_name, MESSAGE.channel, "", {"countdown": 60})
    publish(listener, [row(1), row(2)])
    assert template_of(listener) is None
    etas = [d["headers"]["eta"] for d in raw_messages("celery")]
    assert len(etas) == 2 and all(eta is not None for eta in etas)


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
