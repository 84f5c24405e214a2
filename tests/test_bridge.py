"""The bridge in-process against the real database and the real broker, with no worker."""

import base64
import collections
import dataclasses
import datetime
import io
import json
import os
import uuid

import pytest
from celery import Celery, current_app
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

import pgcelery
from pgcelery import messages, registry, sql
from pgcelery.bridge import Bridge, ClaimSize
from pgcelery.models import Notification
from pgcelery.publish import BrokerUnavailable, Publisher
from pgcelery.registry import Listener
from pgcelery.status import channel_status
from pgcelery.store import Scope
from tests import support
from tests.support import insert_raw
from tests.testapp.channels import Message, Routed, Tally, WithContext
from tests.testapp.models import Writer

pytestmark = [pytest.mark.connector, pytest.mark.broker]

MESSAGE = "tests.testapp.channels.Message"


def test_drain_publishes_one_message_per_listener_then_deletes_the_row(bridge):
    pgcelery.notify(WithContext, n=1)
    notification = Notification.objects.get()
    assert bridge.drain() == 1
    assert not Notification.objects.exists()
    published = {m.headers["task"]: m for m in support.take_messages("celery")}
    assert sorted(published) == ["tests.testapp.listeners.with_context",
                                 "tests.testapp.listeners.without_context"]
    for task, message in published.items():
        row = messages.Row(notification.id, 0, notification.uuid, "", "", "", None)
        assert message.headers["id"] == messages.task_id(row, task, "")
        args, kwargs, _ = message.decode()
        assert args == []
        assert kwargs[messages.ENVELOPE]["payload"] == '{"n": 1}'


def test_monitoring_shows_which_notification_and_not_its_data(bridge):
    """Flower and ``celery events`` show a task's kwargs as its message's kwargsrepr."""
    pgcelery.notify(Message, text="private")
    [notification] = Notification.objects.values_list("id", flat=True)
    bridge.drain()
    [shown] = [m.headers["kwargsrepr"] for m in support.take_messages("celery")]
    assert shown == f"{{'_pgcelery': <notification {notification} on {MESSAGE}>}}"


@pytest.mark.django_db
def test_a_broadcast_route_declares_its_exchange_and_no_queue_of_the_bridges():
    """A queue of the bridge's bound to the fanout exchange would keep a copy of every
    message, read by nobody (on RabbitMQ: a queue never consumed is never auto-deleted)."""
    listener = registry.find("tests.testapp.channels.Broadcasted", "",
                             "tests.testapp.listeners.broadcast_received")
    publisher = Publisher(current_app._get_current_object())
    route = publisher._route(listener)
    publisher.close()
    queue = route.send_options["queue"]
    assert (queue.exchange.type, route.redis_list) == ("fanout", None)
    with current_app.connection_for_write() as conn, pytest.raises(conn.channel_errors):
        conn.default_channel.queue_declare(queue=queue.name, passive=True)


def test_the_claim_and_the_statements_of_every_turn_run_prepared_in_the_bridges_session(
        bridge):
    [outbox] = bridge.outboxes
    connector = outbox.connector
    with connector.transaction():
        found = connector.run("SELECT statement FROM pg_prepared_statements")
    assert len(found) == len(sql.PREPARED) + 1
    pgcelery.notify(Message, text="prepared")
    assert bridge.drain() == 1
    with connector.transaction():
        runs = dict(connector.run("SELECT name, generic_plans + custom_plans "
                                  "FROM pg_prepared_statements"))
    names = {statement: execute.split('"')[1]
             for statement, execute in connector._executes.items()}
    assert runs[names[connector.claim_statement]] == 1 and runs[names[sql.DELETE]] == 1


def test_a_prepared_statement_takes_its_parameters_as_the_statement_casts_them():
    statement = "SELECT %s::int[], %(a)s, x LIKE 'a%%s' FROM t WHERE y = ANY(%s) AND z < %(a)s"
    assert sql.prepared("p", statement) == (
        """PREPARE "p" AS SELECT $1::int[], $2, x LIKE 'a%s' FROM t WHERE y = ANY($3) AND z < $2""",
        'EXECUTE "p" (%s::int[], %(a)s, %s)')


def test_a_wake_up_read_during_a_batch_is_not_lost(bridge):
    pgcelery.notify(Message, text="woken")
    # The claim reads the pending wake-up off the socket along with its own result.
    assert bridge.drain() == 1
    assert bridge._wait(bridge.outboxes[0], timeout=0) is True
    assert bridge._wait(bridge.outboxes[0], timeout=0) is False


def test_dispatch_options_are_on_the_message(bridge):
    pgcelery.notify(Routed, n=1)
    bridge.drain()
    [message] = support.take_messages("tests.routed")
    assert message.properties["priority"] == 7
    assert message.headers["eta"] is not None
    assert message.headers["expires"] is not None


#: Older than PGCELERY_UNKNOWN_GRACE: no bridge that knows the row's channel took it.
PAST_GRACE = 301


def test_rows_that_cannot_be_dispatched_are_kept_as_failed_and_never_block_the_rest(bridge):
    unknown = insert_raw("gone.channels.Removed", age=PAST_GRACE)
    orphan = insert_raw("tests.testapp.channels.WriterChannel", "pgcelery_after_i_0000000000",
                        age=PAST_GRACE)
    pgcelery.notify(Message, text="after the bad rows")
    assert bridge.drain() == 3
    [message] = support.take_messages("celery")
    assert message.headers["task"] == "tests.testapp.listeners.message_received"
    failed = dict(Notification.objects.filter(failed_at__isnull=False).values_list("id", "failure"))
    assert sorted(failed) == [unknown, orphan]
    assert failed[unknown].startswith("unknown channel 'gone.channels.Removed'")
    assert "looked for in every installed app's listeners.py and tasks.py" in failed[unknown]
    assert failed[orphan].startswith("no listener for trigger 'pgcelery_after_i_0000000000'")
    assert bridge.drain() == 0
    assert [(s["channel"], s["pending"], s["failed"]) for s in channel_status("default")] == [
        ("gone.channels.Removed", 0, 1), ("tests.testapp.channels.WriterChannel", 0, 1)
    ]


def test_rows_a_bridge_does_not_know_wait_for_one_that_does_then_fail(bridge):
    """A rolling deploy: the old release's bridge leaves a new channel's rows, and a new
    trigger's, to the new release's; past the grace, they fail as unknown."""
    new_channel = insert_raw("brand.channels.New")
    new_trigger = insert_raw("tests.testapp.channels.WriterChannel", "pgcelery_after_i_1111111111")
    for n in range(15):  # more than a batch: they must not stop the rows behind them
        pgcelery.notify(Message, text=str(n))
    old_release = [listener for listener in registry.registered_listeners()
                   if listener.channel != "tests.testapp.channels.Message"]
    [outbox] = bridge.outboxes
    bridge.scope = Scope.of(old_release, None, datetime.timedelta(seconds=300))
    assert bridge.drain() == 0  # the Message rows are the new release's too
    assert Notification.objects.filter(failed_at__isnull=True).count() == 17

    bridge.scope = Scope.of(registry.registered_listeners(), None,
                            datetime.timedelta(seconds=300))
    assert bridge.drain() == 15
    assert len(support.take_messages("celery")) == 15
    pending = set(Notification.objects.filter(failed_at__isnull=True).values_list("id", flat=True))
    assert pending == {new_channel, new_trigger}
    status = {s["channel"]: (s["pending"], s["failed"]) for s in channel_status("default")}
    assert status["brand.channels.New"] == (1, 0)

    Notification.objects.update(created_at=timezone.now() - datetime.timedelta(seconds=301))
    assert bridge.drain() == 2
    failed = dict(Notification.objects.filter(failed_at__isnull=False).values_list("id", "failure"))
    assert failed[new_channel].startswith("unknown channel 'brand.channels.New'")
    assert failed[new_trigger].startswith("no listener for trigger")


def test_a_grace_of_0_fails_unknown_rows_at_once(transactional_db):
    with override_settings(PGCELERY_UNKNOWN_GRACE=0):
        bridge = Bridge(current_app._get_current_object())
    bridge.connect()
    unknown = insert_raw("gone.channels.Removed")
    assert bridge.drain() == 1
    bridge.close()
    assert Notification.objects.get(pk=unknown).failure.startswith("unknown channel")


def test_drain_takes_as_many_batches_as_needed(bridge, caplog):
    for n in range(25):
        pgcelery.notify(Message, text=str(n))
    with caplog.at_level("INFO", logger="pgcelery.bridge"):
        assert bridge.drain() == 25
    assert [r.getMessage() for r in caplog.records] == [
        "Published 10 notification(s).", "Published 10 notification(s).",
        "Published 5 notification(s).",
    ]
    texts = [json.loads(m.decode()[1][messages.ENVELOPE]["payload"])["text"]
             for m in support.take_messages("celery")]
    assert sorted(texts, key=int) == [str(n) for n in range(25)]


def test_a_claim_is_bounded_by_payload_bytes_and_a_larger_row_goes_alone(transactional_db,
                                                                         caplog):
    support.purge_queues()
    with override_settings(PGCELERY_BATCH_BYTES=int(3.5 * 2**20)):
        bridge = Bridge(current_app._get_current_object(), batch_size=100)
    bridge.connect()
    megabyte = [base64.b64encode(os.urandom(786_432)).decode() for _ in range(7)]  # 1 MiB
    for text in megabyte:
        pgcelery.notify(Message, text=text)
    pgcelery.notify(Message, text=base64.b64encode(os.urandom(3 * 786_432)).decode() * 2)
    pgcelery.notify(Message, text="small")
    with caplog.at_level("INFO", logger="pgcelery.bridge"):
        assert bridge.drain() == 9
    bridge.close()
    assert [r.getMessage() for r in caplog.records] == [
        "Published 3 notification(s).", "Published 3 notification(s).",
        "Published 1 notification(s).",  # the next row, 6 MiB, would not fit
        "Published 1 notification(s).",  # over the budget on its own: it goes alone
        "Published 1 notification(s).",
    ]
    assert len(support.take_messages("celery")) == 9
    assert not Notification.objects.exists()


def test_the_byte_budget_counts_payloads_as_decoded_text(transactional_db, caplog):
    """A string of one letter is stored in a few kilobytes: counted so, 12 MiB of them fit a
    2.5 MiB budget in one claim."""
    support.purge_queues()
    with override_settings(PGCELERY_BATCH_BYTES=int(2.5 * 2**20)):
        bridge = Bridge(current_app._get_current_object(), batch_size=100)
    bridge.connect()
    for _ in range(12):
        pgcelery.notify(Message, text="x" * 2**20)
    with caplog.at_level("INFO", logger="pgcelery.bridge"):
        assert bridge.drain() == 12
    bridge.close()
    assert [r.getMessage() for r in caplog.records] == ["Published 2 notification(s)."] * 6
    assert len(support.take_messages("celery")) == 12


def test_a_context_counts_once_per_notification_it_goes_with_and_is_held_once(
        transactional_db, caplog):
    """A bulk write's chunk of 100 rows carries its context into 100 messages: 100 times
    its bytes in the budget, and one string in the bridge's memory."""
    support.purge_queues()
    context = {"blob": base64.b64encode(os.urandom(30_000)).decode()}  # 40 KB
    with override_settings(PGCELERY_BATCH_BYTES=6 * 2**20):
        bridge = Bridge(current_app._get_current_object(), batch_size=1000)
    bridge.connect()
    with transaction.atomic():
        pgcelery.set_notification_context(context)
        Writer.objects.bulk_create(Writer(name=str(n)) for n in range(3 * sql.CHUNK))
    [outbox] = bridge.outboxes
    with outbox.store.transaction():
        rows, left = outbox.store.claim(1000, bridge.batch_bytes, bridge.scope)
    assert (len(rows), left) == (sql.CHUNK, True)  # one chunk's 4 MB of context fit 6 MiB
    assert all(row.context is rows[0].context for row in rows)
    assert json.loads(rows[0].context) == context
    with caplog.at_level("INFO", logger="pgcelery.bridge"):
        assert bridge.drain() == 3 * sql.CHUNK
    bridge.close()
    assert [r.getMessage() for r in caplog.records] == ["Published 100 notification(s)."] * 3
    assert len(support.take_messages("celery")) == 3 * sql.CHUNK


def test_a_claim_that_ran_past_the_database_timeout_makes_the_next_ones_smaller():
    size = ClaimSize(500, 64 * 2**20)
    size.overran()
    assert size.limits == (250, 32 * 2**20)
    size.took(10.0, timeout=30.0)  # over a quarter of the timeout: stays small
    assert size.limits == (250, 32 * 2**20)
    for _ in range(20):
        size.overran()
    assert size.limits == (1, 2**18)  # one row, whatever its size
    for _ in range(30):
        size.took(1.0, timeout=30.0)
    assert size.limits == (500, 64 * 2**20)


def notify_tallies(count):
    with transaction.atomic():
        for n in range(count):
            pgcelery.notify(Tally, n=n, day=datetime.date(2026, 1, 1))


def published_batches():
    """{task id: the ns of its notifications} of the tallies_batched messages published."""
    found = {}
    for message in support.take_messages("celery"):
        if message.headers["task"] == "tests.testapp.listeners.tallies_batched":
            items = message.decode()[1][messages.ENVELOPE]["batch"]
            found[message.headers["id"]] = [json.loads(item[3])["n"] for item in items]
    return found


def publish_and_lose_the_commit(bridge, limit):
    """Publishes one claim of up to ``limit`` notifications, whose transaction is then lost
    before its commit."""
    [outbox] = bridge.outboxes
    with pytest.raises(RuntimeError), outbox.store.transaction():
        rows, formed, _ = bridge._claim(outbox, limit, bridge.batch_bytes)
        bridge._dispatch_all(rows, outbox, formed)
        raise RuntimeError("the connection was lost before the commit")


@pytest.mark.parametrize("again", [20, 5])
def test_a_batch_claimed_again_after_a_crash_goes_as_it_was_formed(bridge, again):
    """The bridge's connection is lost after it published a claim's batch, before its commit;
    the next claim takes more (newer notifications with them) or fewer rows (the claim shrank
    after the timeout) and still sends that batch as it was, under its task id: each
    notification goes out under one task id. Before, the claim re-formed the batch of what
    it found, under another id."""
    notify_tallies(30)
    publish_and_lose_the_commit(bridge, 10)
    [(first, ns)] = published_batches().items()
    assert ns == list(range(10))
    bridge.outboxes[0].claim = ClaimSize(again, bridge.batch_bytes)
    assert bridge.drain() == 30
    batches = published_batches()
    assert batches[first] == list(range(10))
    published = sorted(n for ns in batches.values() for n in ns)
    assert published == list(range(30))  # each once
    assert not Notification.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pgcelery_batch")
        assert cursor.fetchone() == (0,)  # forgotten with their rows


def test_a_batch_is_left_pending_while_another_claim_holds_part_of_it(bridge):
    notify_tallies(20)
    publish_and_lose_the_commit(bridge, 20)
    [(first, _)] = published_batches().items()
    last = Notification.objects.order_by("id").last()
    with transaction.atomic():  # another bridge's claim holds the batch's last row
        Notification.objects.select_for_update().get(pk=last.pk)
        assert bridge.drain() == 0
    assert Notification.objects.count() == 20
    assert published_batches() == {}
    assert bridge.drain() == 20
    assert published_batches() == {first: list(range(20))}


def test_a_bridge_serves_only_the_channels_it_is_given(transactional_db):
    support.purge_queues()
    bridge = Bridge(current_app._get_current_object(), channels=["tests.testapp.channels.Message"])
    bridge.connect()
    pgcelery.notify(WithContext, n=1)
    pgcelery.notify(Message, text="mine")
    assert bridge.drain() == 1
    bridge.close()
    assert list(Notification.objects.values_list("channel", flat=True)) == [
        "tests.testapp.channels.WithContext"
    ]
    assert [m.headers["task"] for m in support.take_messages("celery")] == [
        "tests.testapp.listeners.message_received"
    ]


def test_an_unreachable_broker_leaves_every_row_in_place(transactional_db):
    unreachable = Celery(set_as_current=False)
    # The write URL: CELERY_BROKER_URL in the environment would override a broker argument.
    unreachable.conf.broker_write_url = "redis://127.0.0.1:1/0"
    bridge = Bridge(unreachable)
    bridge.connect()
    pgcelery.notify(Message, text="kept")
    with pytest.raises(BrokerUnavailable):
        bridge.drain()
    bridge.close()
    assert Notification.objects.filter(failed_at__isnull=True).count() == 1


def test_rows_whose_payload_cannot_be_decoded_are_kept_as_failed(bridge):
    wrong_type = insert_raw("tests.testapp.channels.Message", payload='{"text": 5}')
    missing = insert_raw("tests.testapp.channels.Message", payload='{}')
    not_rows = insert_raw("tests.testapp.channels.WriterChannel",
                          support.trigger_of("writer_inserted"),
                          payload="[]")
    pgcelery.notify(Message, text="fine")
    assert bridge.drain() == 4
    published = support.take_messages("celery")
    assert [m.decode()[1][messages.ENVELOPE]["payload"] for m in published] == ['{"text": "fine"}']
    failed = dict(Notification.objects.filter(failed_at__isnull=False).values_list("id", "failure"))
    assert failed == {
        wrong_type: "payload cannot be decoded: tests.testapp.channels.Message.text: "
                    "expected str, got int 5",
        missing: "payload cannot be decoded: tests.testapp.channels.Message: payload has no "
                 "'text'",
        not_rows: "payload cannot be decoded: trigger payload is a list, not an object",
    }


def test_a_bulk_writes_chunks_give_one_task_per_row_and_keep_a_bad_one_apart(bridge):
    Writer.objects.bulk_create(Writer(name=str(n)) for n in range(sql.CHUNK + 5))
    first, _ = Notification.objects.order_by("id")
    with connection.cursor() as cursor:  # the chunk's third notification cannot be decoded
        cursor.execute("UPDATE pgcelery_notification SET payload = jsonb_set(payload, '{2}', "
                       "'\"garbage\"') WHERE id = %s", [first.id])
    # The batch size (10) bounds the notifications claimed, but never splits a chunk.
    assert bridge.drain() == sql.CHUNK + 5
    published = support.take_messages("celery")
    names = [json.loads(m.decode()[1][messages.ENVELOPE]["payload"])["new"]["name"]
             for m in published]
    assert names == [str(n) for n in range(sql.CHUNK + 5) if n != 2]
    assert len({m.headers["id"] for m in published}) == sql.CHUNK + 4
    [kept] = Notification.objects.all()
    assert (kept.size, kept.side, kept.created_at) == (1, None, first.created_at)
    assert kept.payload == {"old": None, "new": "garbage"}
    assert kept.failure == "payload cannot be decoded: trigger payload has no 'new' row"
    assert [(s["pending"], s["failed"]) for s in channel_status("default")] == [(0, 1)]


def test_failed_rows_can_be_retried_or_discarded(bridge):
    first = insert_raw("tests.testapp.channels.Message", payload='{"text": 5}')
    second = insert_raw("tests.testapp.channels.Message", payload='{"text": 6}')
    bridge.drain()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pgcelery_notification SET payload = '{\"text\": \"5\"}' "
                       "WHERE id = %s", [first])
    call_command("pgcelery_failed", "retry", "--id", str(first), stdout=io.StringIO())
    # The retry woke the bridge.
    assert bridge._wait(bridge.outboxes[0], timeout=5) is True
    assert bridge.drain() == 1
    [message] = support.take_messages("celery")
    assert message.decode()[1][messages.ENVELOPE]["id"] == first
    output = io.StringIO()
    call_command("pgcelery_failed", stdout=output)
    assert output.getvalue().startswith(f"#{second} tests.testapp.channels.Message failed ")
    call_command("pgcelery_failed", "discard", "--channel", "tests.testapp.channels.Message",
                 stdout=output)
    assert not Notification.objects.exists()


def test_messages_are_published_with_publisher_confirms(bridge):
    pgcelery.notify(Message, text="confirmed")
    assert bridge.drain() == 1
    connection = bridge.outboxes[0].publisher._connection
    assert connection.transport_options["confirm_publish"] is True
    if connection.transport.driver_type == "amqp":
        assert bridge.outboxes[0].publisher._producer.channel._confirm_selected is True
    assert len(support.take_messages("celery")) == 1


def test_rows_published_but_never_committed_go_again_with_the_same_task_ids(bridge):
    pgcelery.notify(WithContext, n=1)
    [outbox] = bridge.outboxes
    with pytest.raises(RuntimeError), outbox.store.transaction():
        rows, _ = outbox.store.claim(10, bridge.batch_bytes, bridge.scope)
        bridge._dispatch_all(rows, outbox)
        raise RuntimeError("the bridge died after publishing, before its commit")
    assert bridge.drain() == 1
    ids = collections.Counter(m.headers["id"] for m in support.take_messages("celery"))
    assert sorted(ids.values()) == [2, 2]


def test_one_task_on_two_channels_keeps_each_listeners_route(transactional_db):
    """Routes belong to a listener, not to its task: the same task, two queues."""
    support.purge_queues()
    task = "tests.testapp.listeners.message_received"
    to_stats = Listener(task, "tests.testapp.channels.Message", "", {"queue": "stats"})
    to_routed = Listener(task, "tests.testapp.channels.Routed", "", {"queue": "tests.routed"})
    publisher = Publisher(current_app._get_current_object())
    try:
        with publisher.grouped():
            for n, listener in enumerate([to_stats, to_routed, to_stats]):
                row = messages.Row(n, 0, uuid.uuid4(), listener.channel, "", "{}", None)
                publisher.publish(messages.Delivery(listener, f"task-{n}", [row]), "default")
    finally:
        publisher.close()
    assert [m.headers["id"] for m in support.take_messages("stats")] == ["task-0", "task-2"]
    assert [m.headers["id"] for m in support.take_messages("tests.routed")] == ["task-1"]


def test_a_message_the_broker_refuses_fails_its_notification_alone(bridge, caplog):
    if not current_app.conf.broker_url.startswith("amqp"):
        pytest.skip("RabbitMQ refuses messages over its max_message_size (128 MB by default)")
    pgcelery.notify(Message, text="before")
    pgcelery.notify(Message, text="x" * (130 * 1024 * 1024))
    pgcelery.notify(Message, text="after")
    with caplog.at_level("ERROR", logger="pgcelery.bridge"):
        assert bridge.drain() == 3
    texts = [json.loads(m.decode()[1][messages.ENVELOPE]["payload"])["text"]
             for m in support.take_messages("celery")]
    assert texts == ["before", "after"]
    [failed] = Notification.objects.filter(failed_at__isnull=False)
    assert "PRECONDITION_FAILED" in failed.failure and "max size" in failed.failure
    assert failed.failure.startswith("publishing task tests.testapp.listeners.message_received "
                                     "failed: the broker refused the message")
    assert not bridge.broker.down


def test_trigger_rows_django_cannot_read_are_kept_as_failed_naming_the_column(bridge):
    """Legal PostgreSQL values Django has no Python value for fail at the bridge, not later
    in the worker: each row apart, with the column and the value."""
    with connection.cursor() as cursor:
        cursor.execute(
            'INSERT INTO testapp_sample ("when", day, ratio, token, flag, doc, blob, span) '
            "SELECT w::timestamptz, d::date, 1.5, gen_random_uuid(), true, '{}', '\\x00', "
            "'1 day' FROM (VALUES ('2026-01-01', 'infinity'), ('2026-01-01', '0044-03-15 BC'), "
            "('2026-01-01', '10000-01-01'), ('infinity', '2026-01-01'), "
            "('2026-01-01', '2026-01-02')) AS v (w, d)"
        )
    assert bridge.drain() == 5
    [published] = support.take_messages("celery")
    payload = json.loads(published.decode()[1][messages.ENVELOPE]["payload"])
    assert payload["new"]["day"] == "2026-01-02"
    reasons = sorted(Notification.objects.filter(failed_at__isnull=False)
                     .values_list("failure", flat=True))
    assert len(reasons) == 4
    for column, value in (("day", "'infinity'"), ("day", "'0044-03-15 BC'"),
                          ("day", "'10000-01-01'"), ("when", "'infinity'")):
        assert any(f"new column {column!r} (Sample.{column}) holds {value}, which Django "
                   "cannot read as a Date" in reason for reason in reasons), (column, value)


def test_a_listener_whose_options_celery_cannot_use_fails_its_notifications_alone(
        bridge, monkeypatch):
    """A countdown that is not a number: Celery cannot make the message, for any
    notification of that listener; the others go on."""
    task = "tests.testapp.listeners.message_received"
    found = registry.find(MESSAGE, "", task)
    bad = dataclasses.replace(found, options={**found.options, "countdown": "soon"})
    monkeypatch.setitem(registry._listeners[MESSAGE, ""], task, bad)
    pgcelery.notify(Message, text="cannot be sent")
    pgcelery.notify(Routed, n=1)
    assert bridge.drain() == 2
    assert [m.headers["task"] for m in support.take_messages("tests.routed")] == [
        "tests.testapp.listeners.routed"]
    [failure] = Notification.objects.filter(failed_at__isnull=False).values_list("failure",
                                                                                  flat=True)
    assert failure.startswith(f"publishing task {task} failed: TypeError")


#: Rows a role calling pgcelery's writer function with arguments of its own can store, as
#: (side, chunk): a batch item whose uuid does not read, an empty chunk, an unknown side.
MALFORMED_CHUNKS = [
    ("batch", '[{"id": 1, "uuid": "not-a-uuid", "position": 0, "payload": {"k": 1}}]'),
    ("new", "[]"),
    ("zzz", "[1]"),
]


@pytest.mark.e2e  # runs a manage.py command as a subprocess
@pytest.mark.parametrize(("side", "chunk"), MALFORMED_CHUNKS)
def test_a_malformed_row_from_a_writer_is_failed_and_never_blocks_the_rest(bridge, side, chunk):
    """It raised out of the claim (a uuid cast), so the bridge exited on every restart, or it
    yielded no notification and was claimed first, forever, by every claim."""
    channel = "tests.testapp.channels.WriterChannel"
    with connection.cursor() as cursor:
        for _ in range(12):  # more than a claim takes (10)
            cursor.execute("SELECT pgcelery_notify_chunks_v1(%s, 'x', %s, %s, ARRAY[%s::jsonb])",
                           [channel, support.trigger_of("writer_inserted"), side, chunk])
    pgcelery.notify(Message, text="after the malformed rows")
    bridge.drain()
    [message] = support.take_messages("celery")
    assert message.headers["task"] == "tests.testapp.listeners.message_received"
    failed = Notification.objects.filter(failed_at__isnull=False)
    assert failed.count() == 12 and not Notification.objects.filter(failed_at=None).exists()
    assert {row.failure for row in failed} == {
        "malformed outbox row: it holds no notification pgcelery wrote (an empty or unknown "
        "chunk, or a batch item without its id, position or uuid), as a role calling "
        "pgcelery's writer functions with arguments of its own can store"}
    assert {row.side for row in failed} == {side}
    assert support.manage("pgcelery_status").returncode == 2
