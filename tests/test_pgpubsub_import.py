"""pgcelery_import_pgpubsub: the notifications django-pgpubsub stored, in pgcelery's outbox."""

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from pgcelery.models import Notification
from pgcelery.pgpubsub_import import TABLE, pgpubsub_name
from tests import support

pytestmark = pytest.mark.django_db(transaction=True)

READS = "tests.testapp.channels.Reads"
WRITERS = "tests.testapp.channels.WriterChannel"


@pytest.fixture
def pgpubsub_table():
    """django-pgpubsub's table as its migrations leave it."""
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, channel varchar(63) NOT "
                       "NULL, payload jsonb NOT NULL, created_at timestamptz, db_version int)")
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {TABLE}")


def stored(channel, payload):
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (channel, payload, created_at) "
                       "VALUES (%s, %s, now()) RETURNING id", [channel, json.dumps(payload)])
        return cursor.fetchone()[0]


def writer(writer_id, name):
    return {"id": writer_id, "name": name, "email": ""}


def left_in_pgpubsub():
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {TABLE} ORDER BY id")
        return [row_id for (row_id,) in cursor.fetchall()]


def imported(*args):
    output = io.StringIO()
    call_command("pgcelery_import_pgpubsub", *args, stdout=output)
    return output.getvalue()


@pytest.mark.usefixtures("pgpubsub_table")
def test_stored_notifications_move_to_their_channels_and_triggers(bridge):
    reads = stored(pgpubsub_name(READS), {
        "kwargs": {"model_id": 7, "model_type": "Post", "date": "2026-12-03"},
        "context": {"tenant": "acme"}})
    inserted = stored(pgpubsub_name(WRITERS), {"app": "testapp", "model": "Writer", "old": None,
                                               "new": writer(1, "new")})
    deleted = stored(pgpubsub_name(WRITERS), {"app": "testapp", "model": "Writer",
                                              "old": writer(2, "gone"), "new": None})
    unknown = stored("pgpubsub_00000", {"kwargs": {}})

    dry_run = imported("--dry-run")
    assert dry_run.startswith("3 pgpubsub notification(s) would move, as 4 pgcelery "
                              "notification(s).")
    assert f"#{unknown}: no registered pgcelery channel" in dry_run
    assert not Notification.objects.exists()
    assert left_in_pgpubsub() == [reads, inserted, deleted, unknown]

    assert imported().startswith("3 pgpubsub notification(s) moved, as 4 pgcelery")
    assert left_in_pgpubsub() == [unknown]
    moved = sorted((row.channel, row.trigger, json.dumps(row.payload, sort_keys=True),
                    row.context) for row in Notification.objects.order_by("id"))
    assert moved == sorted((channel, trigger, json.dumps(payload, sort_keys=True), context)
                           for channel, trigger, payload, context in [
        (READS, "", {"model_id": 7, "model_type": "Post", "date": "2026-12-03", "tags": []},
         {"tenant": "acme"}),
        (WRITERS, support.trigger_of("writer_inserted"), {"old": None, "new": writer(1, "new")},
         None),
        (WRITERS, support.trigger_of("writer_deleting"), {"old": writer(2, "gone"), "new": None},
         None),
        (WRITERS, support.trigger_of("writer_deleted"), {"old": writer(2, "gone"), "new": None},
         None),
    ])
    assert bridge.drain() == 4
    tasks = sorted(message.headers["task"].rsplit(".", 1)[-1]
                   for message in support.take_messages("celery"))
    assert tasks == ["reads_counted", "writer_deleted", "writer_deleting", "writer_inserted"]


@pytest.mark.usefixtures("pgpubsub_table")
def test_a_payload_that_cannot_be_read_stays_where_it_is():
    bad = stored(pgpubsub_name(READS), {"kwargs": {"model_id": "seven", "model_type": "Post"}})
    output = imported()
    assert f"#{bad}: the payload cannot be read: tests.testapp.channels.Reads.model_id" in output
    assert left_in_pgpubsub() == [bad]
    assert not Notification.objects.exists()


def test_a_database_without_pgpubsub_says_so():
    with pytest.raises(CommandError, match=f"Database 'default' has no {TABLE} table"):
        imported()
