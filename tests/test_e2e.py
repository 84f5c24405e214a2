"""The real bridge and a real worker, started as subprocesses, on the real database and broker."""

import datetime
import decimal
import json
import uuid

import pytest
from django.db import connection, transaction
from django.db.backends.postgresql.psycopg_any import DateRange, DateTimeTZRange
from django.test import Client

import pgcelery
from blog.models import Author, Post, PostReadCount
from pgcelery.models import Notification
from tests import support
from tests.testapp.channels import Broadcasted, Everything
from tests.testapp.listeners import described, summary
from tests.testapp.models import Account, Event, Legacy, Restaurant, Sample, Sku, Span, Writer

pytestmark = [pytest.mark.usefixtures("running"), pytest.mark.connector, pytest.mark.broker]


def events(listener):
    return list(Event.objects.filter(listener=listener).order_by("id"))


def unsaved(instance):
    """How a listener describes ``instance`` rebuilt from its row: equal fields, not saved."""
    return {**described(instance), "adding": True}


def wait_for_events(listener, count):
    support.wait_until(lambda: Event.objects.filter(listener=listener).count() >= count,
                       what=f"{count} {listener} events")
    support.settle()
    return events(listener)


def test_seed_example_creates_one_post_per_author():
    authors = [Author.objects.create(name=f"author {i}") for i in range(5)]
    support.wait_until(lambda: Post.objects.count() >= 5, what="5 posts")
    support.settle()
    assert sorted(Post.objects.values_list("author_id", flat=True)) == [a.pk for a in authors]
    assert set(Post.objects.values_list("content", flat=True)) == {
        "Welcome! This is your first post"
    }


def test_post_fetch_notifies_post_reads_listener():
    author = Author.objects.create(name="reader")
    support.wait_until(lambda: Post.objects.filter(author=author).exists(), what="a post")
    post = Post.objects.get(author=author)
    for _ in range(2):
        assert Post.fetch(post.pk) == post
    response = Client().get(f"/posts/{post.pk}/")
    assert response.status_code == 200
    assert response.json()["id"] == post.pk
    support.wait_until(
        lambda: PostReadCount.objects.filter(post=post, count=3).exists(), what="3 reads"
    )
    support.settle()
    assert list(PostReadCount.objects.values_list("post_id", "date", "count")) == [
        (post.pk, datetime.date.today(), 3)
    ]


def test_bulk_create_of_1000_gives_exactly_1000():
    Author.objects.bulk_create(Author(name=f"bulk {i}") for i in range(1000))
    support.wait_until(lambda: Post.objects.count() >= 1000, timeout=180, what="1000 posts")
    support.settle()
    assert Post.objects.count() == 1000
    assert Post.objects.values("author_id").distinct().count() == 1000


def test_workers_keep_their_database_connections_between_tasks():
    for n in range(40):
        pgcelery.notify("tests.testapp.channels.Ping", n=n)
    backends = {event.data["backend"] for event in wait_for_events("ping", 40)}
    # One connection per pool process (two), each possibly renewed once when it passes
    # CONN_MAX_AGE during the test; a connection per task would give 40.
    assert 1 <= len(backends) <= 4


def test_rolled_back_notifications_are_never_dispatched():
    with pytest.raises(RuntimeError), transaction.atomic():
        Writer.objects.create(name="rolled back")
        pgcelery.notify("tests.testapp.channels.Message", text="rolled back")
        raise RuntimeError("rollback")
    # Committed after the rolled-back ones: once it ran, they would have too.
    pgcelery.notify("tests.testapp.channels.Message", text="committed")
    [event] = wait_for_events("message_received", 1)
    assert event.data == {"text": "committed"}
    assert events("writer_inserted") == []


def test_every_payload_type_round_trips():
    values = dict(
        an_int=-(2**62),
        a_float=0.1,
        a_str="héllo ☃",
        a_bool=True,
        a_none=None,
        a_date=datetime.date(2026, 2, 28),
        a_datetime=datetime.datetime(2026, 2, 28, 13, 14, 15, 161718,
                                     tzinfo=datetime.timezone(datetime.timedelta(hours=5))),
        a_naive_datetime=datetime.datetime(2026, 2, 28, 13, 14, 15),
        a_decimal=decimal.Decimal("12345678901234567890.12345678901234567890"),
        a_uuid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        maybe=None,
        maybe_not=datetime.date(2000, 1, 1),
        dates=[datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)],
        pair=(1, "one"),
        numbers=(1.5, 2),
        tags={"b", "a"},
        prices={"x": decimal.Decimal("1.10")},
        by_id={3: uuid.UUID(int=3)},
        nested=[{"at": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc), "no": None}],
    )
    pgcelery.notify(Everything, **values)
    [event] = wait_for_events("everything_received", 1)
    expected = {**values, "numbers": (1.5, 2.0), "with_default": 7, "with_factory": [1, 2]}
    assert event.data == {name: summary(value) for name, value in expected.items()}


def test_model_shapes_round_trip_as_unsaved_instances():
    writer = Writer.objects.create(name="w")
    sku = Sku.objects.create(code="SKU-1", price=decimal.Decimal("1234567890.12345678901234567890"))
    legacy = Legacy.objects.create(title="a 'quoted' title", writer=writer)
    restaurant = Restaurant.objects.create(name="Luigi's", serves_pizza=True)
    sample = Sample.objects.create(
        when=datetime.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc),
        day=datetime.date(2026, 5, 6), ratio=1.25, flag=False, doc={"a": [1, 2.5, None]},
        blob=b"\x00\x01binary\xff", span=datetime.timedelta(days=1, seconds=3), note=None,
    )
    expectations = {
        "sku_saving": sku,
        "legacy_saved": legacy,
        "restaurant_inserted": restaurant,
        "sample_inserted": sample,
    }
    for listener, instance in expectations.items():
        [event] = wait_for_events(listener, 1)
        assert event.data == {"old": None, "new": unsaved(instance)}, listener


def test_ranges_and_numeric_nan_reach_the_listener():
    """to_jsonb writes them as PostgreSQL's text, which the fields' to_python refuses."""
    Span.objects.create(days=DateRange(datetime.date(2020, 1, 1), datetime.date(2020, 2, 1)),
                        times=DateTimeTZRange(
                            datetime.datetime(2020, 1, 1, 10, tzinfo=datetime.timezone.utc),
                            None),
                        counts=[1, 2])
    with connection.cursor() as cursor:  # Django refuses to write a NaN; SQL does not
        cursor.execute("INSERT INTO testapp_span (days, amount) VALUES ('empty', 'NaN')")
    events = wait_for_events("span_inserted", 2)
    assert sorted((event.data for event in events), key=json.dumps) == [
        {"days": "empty", "times": None, "amount": "NaN", "counts": None},
        {"days": ["2020-01-01", "2020-02-01", True, False],
         "times": ["2020-01-01 10:00:00+00:00", "None", True, False],
         "amount": "None", "counts": [1, 2]},
    ]
    assert not Notification.objects.filter(failed_at__isnull=False).exists()


def test_json_nested_deep_is_delivered_or_kept_as_failed_and_the_rest_flows():
    """500 levels, as the ORM writes them, reach the listener; 5,000, which PostgreSQL
    stores but Python's JSON parser cannot read, fail visibly instead of stopping the bridge."""
    deep: dict = {}
    level = deep
    for _ in range(499):
        level["a"] = level = {}
    sample = Sample.objects.create(
        when=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        day=datetime.date(2026, 1, 1), ratio=0.5, flag=True, doc=deep, blob=b"",
        span=datetime.timedelta(0))
    with connection.cursor() as cursor:
        cursor.execute(
            'INSERT INTO testapp_sample ("when", day, ratio, token, flag, doc, blob, span) '
            "VALUES (now(), current_date, 0, gen_random_uuid(), true, "
            "(repeat('[', 5000) || repeat(']', 5000))::jsonb, '', '0')")
    pgcelery.notify("tests.testapp.channels.Message", text="after the deep ones")
    [message] = wait_for_events("message_received", 1)
    assert message.data == {"text": "after the deep ones"}
    [event] = wait_for_events("sample_inserted", 1)
    assert event.data["new"] == unsaved(sample)
    [failure] = Notification.objects.filter(failed_at__isnull=False).values_list(
        "failure", flat=True)
    assert failure.startswith("payload cannot be decoded: the JSON is nested deeper")


def test_update_with_condition_fires_only_when_the_column_changes():
    writer = Writer.objects.create(name="before", email="a@example.com")
    wait_for_events("writer_inserted", 1)
    Writer.objects.filter(pk=writer.pk).update(email="b@example.com")
    Writer.objects.filter(pk=writer.pk).update(name="after")
    Writer.objects.filter(pk=writer.pk).update(name="after")
    [event] = wait_for_events("writer_renamed", 1)
    assert event.data["old"]["fields"]["name"] == repr("before")
    assert event.data["new"]["fields"]["name"] == repr("after")
    assert event.data["new"]["fields"]["email"] == repr("b@example.com")


def test_delete_listeners_get_old_and_no_new_and_never_cancel_the_delete():
    writer = Writer.objects.create(name="doomed")
    wait_for_events("writer_inserted", 1)
    expected_old = unsaved(writer)
    writer.delete()
    assert not Writer.objects.exists()
    for listener in ("writer_deleting", "writer_deleted"):
        [event] = wait_for_events(listener, 1)
        assert event.data == {"old": expected_old, "new": None}


def test_hostile_strings_arrive_intact():
    texts = ["it's \"quoted\"", "back\\slash \\x00 \\\\", "ünïcødé ☃ 𝄞 \u200b",
             "'); DROP TABLE pgcelery_notification; --", "$$ $tag$ ; NOTIFY x, 'y'"]
    for text in texts:
        pgcelery.notify("tests.testapp.channels.Message", text=text)
    received = wait_for_events("message_received", len(texts))
    assert sorted(event.data["text"] for event in received) == sorted(texts)


def test_large_payloads_go_through():
    text = "x" * (1024 * 1024)
    pgcelery.notify("tests.testapp.channels.Message", text=text)
    sample = Sample.objects.create(
        when=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        day=datetime.date(2026, 1, 1), ratio=0.0, flag=True, doc={}, blob=b"",
        span=datetime.timedelta(0), note="y" * (1024 * 1024),
    )
    [event] = wait_for_events("message_received", 1)
    assert event.data["text"] == text
    [event] = wait_for_events("sample_inserted", 1)
    assert event.data["new"] == unsaved(sample)


def test_a_garbage_wake_up_is_logged_not_stored(bridge_process):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify('tests.testapp.channels.Message', 'garbage ''\\x')")
    pgcelery.notify("tests.testapp.channels.Message", text="after garbage")
    [event] = wait_for_events("message_received", 1)
    assert event.data == {"text": "after garbage"}
    assert "Ignored a wake-up with an unexpected payload" in bridge_process.log()
    assert not Notification.objects.exists()


def test_context_reaches_listeners_that_declare_it():
    with transaction.atomic():
        pgcelery.set_notification_context({"request_id": "r-1", "user": 42})
        pgcelery.notify("tests.testapp.channels.WithContext", n=1)
    pgcelery.notify("tests.testapp.channels.WithContext", n=2)
    with_context = wait_for_events("with_context", 2)
    assert [(e.data["n"], e.data["context"]) for e in with_context] == [
        (1, {"request_id": "r-1", "user": 42}),
        (2, {}),
    ]
    assert sorted(e.data["n"] for e in wait_for_events("without_context", 2)) == [1, 2]


def test_dispatch_options_reach_celery():
    pgcelery.notify("tests.testapp.channels.Routed", n=5)
    [event] = wait_for_events("routed", 1)
    assert event.data == {"n": 5, "queue": "tests.routed"}


def test_task_ids_are_derived_from_notification_and_listener():
    pgcelery.notify("tests.testapp.channels.WithContext", n=1)
    [first] = wait_for_events("with_context", 1)
    [second] = wait_for_events("without_context", 1)
    assert first.task_id != second.task_id
    assert uuid.UUID(first.task_id).version == 5


def test_listener_tasks_remain_ordinary_celery_tasks():
    from tests.testapp.listeners import message_received, routed

    message_received.delay(text="via delay")
    routed.apply_async(kwargs={"n": 9}, queue="tests.routed")
    wait_for_events("message_received", 1)
    [event] = wait_for_events("routed", 1)
    assert events("message_received")[0].data == {"text": "via delay"}
    assert event.data == {"n": 9, "queue": "tests.routed"}


def test_columns_a_channel_leaves_out_never_leave_postgres_and_are_deferred():
    account = Account.objects.create(name="ada", password="pbkdf2$s3cret", api_token="tok-123")
    Account.objects.filter(pk=account.pk).update(name="ada l.")
    created = wait_for_events("account_created", 1)[0].data
    updated = wait_for_events("account_updated", 1)[0].data
    named = wait_for_events("account_named", 1)[0].data
    assert created["new"]["fields"] == {"id": repr(account.pk), "name": "'ada'"}
    assert created["deferred"] == ["api_token", "password"]
    assert (updated["old"]["fields"]["name"], updated["new"]["fields"]["name"]) == (
        "'ada'", "'ada l.'")
    assert updated["deferred"] == ["api_token", "password"]
    assert named["new"]["fields"] == {"id": repr(account.pk), "name": "'ada'"}
    assert named["deferred"] == ["api_token", "password"]


@pytest.mark.usefixtures("transactional_db")
def test_left_out_columns_are_in_no_outbox_row_or_message():
    """What the triggers wrote, which the bridge sends as it is; rolled back unpublished."""
    with transaction.atomic():
        Account.objects.create(name="grace", password="pbkdf2$hidden", api_token="tok-456")
        with connection.cursor() as cursor:
            cursor.execute("SELECT payload::text FROM pgcelery_notification")
            stored = [text for (text,) in cursor.fetchall()]
        transaction.set_rollback(True)
    assert len(stored) == 2
    assert not any("hidden" in text or "tok-456" in text or "password" in text
                   for text in stored)


def test_a_listener_on_a_broadcast_queue_runs_once_in_every_worker_consuming_it(spawn):
    """django-pgpubsub's behaviour without lock_notifications, as a Celery broadcast queue."""
    queues = ",".join([*support.QUEUES, "tests.broadcast"])
    workers = [spawn.worker(name=f"broadcast-{n}", queues=queues) for n in range(2)]
    with transaction.atomic():
        for n in range(3):
            pgcelery.notify(Broadcasted, n=n)
    runs = wait_for_events("broadcast_received", 6)
    assert len(runs) == 6
    by_worker = {}
    for run in runs:
        by_worker.setdefault(run.data["worker"], []).append(run.data["n"])
    assert len(by_worker) == 2
    assert all(sorted(ns) == [0, 1, 2] for ns in by_worker.values())
    assert all(worker.stop() == 0 for worker in workers)
