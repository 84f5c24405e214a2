import decimal

import pytest
from django.db import connection

from pgcelery import sql
from pgcelery.models import Notification
from tests.support import trigger_of
from tests.testapp.models import Account, Legacy, Restaurant, Sku, Writer

pytestmark = pytest.mark.django_db

def rows():
    """(trigger, payload) of each recorded notification, the chunks of bulk writes opened."""
    return [
        (trigger, {"old": None, "new": None, side: row} if side else payload)
        for trigger, payload, side in Notification.objects.order_by("id").values_list(
            "trigger", "payload", "side")
        for row in (payload if side else [None])
    ]


def test_each_channel_timing_and_operation_has_its_own_installed_trigger():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'testapp_writer'::regclass "
            "AND NOT tgisinternal ORDER BY tgname"
        )
        installed = [name for (name,) in cursor.fetchall()]
    names = {trigger_of(n) for n in
             ("writer_inserted", "writer_renamed", "writer_deleting", "writer_deleted")}
    assert len(names) == 4
    assert len(installed) == 4
    assert all(any(name.lower() in pgid for pgid in installed) for name in names)


def test_insert_fires_only_the_insert_trigger():
    writer = Writer.objects.create(name="a")
    assert rows() == [(trigger_of("writer_inserted"),
                       {"old": None, "new": {"id": writer.pk, "name": "a", "email": ""}})]


def test_update_condition_fires_only_when_the_column_changes():
    writer = Writer.objects.create(name="a")
    Notification.objects.all().delete()
    Writer.objects.filter(pk=writer.pk).update(email="e")
    assert rows() == []
    Writer.objects.filter(pk=writer.pk).update(name="b")
    assert rows() == [(trigger_of("writer_renamed"), {
        "old": {"id": writer.pk, "name": "a", "email": "e"},
        "new": {"id": writer.pk, "name": "b", "email": "e"},
    })]


def test_delete_records_old_rows_and_before_delete_never_cancels_it():
    writer = Writer.objects.create(name="a")
    old = {"id": writer.pk, "name": "a", "email": ""}
    Notification.objects.all().delete()
    writer.delete()
    assert not Writer.objects.exists()
    assert sorted(rows()) == sorted([
        (trigger_of("writer_deleting"), {"old": old, "new": None}),
        (trigger_of("writer_deleted"), {"old": old, "new": None}),
    ])


def test_before_save_trigger_never_changes_the_row():
    Sku.objects.create(code="A", price=decimal.Decimal("1.5"))
    Sku.objects.filter(code="A").update(price=decimal.Decimal("2.5"))
    assert Sku.objects.get().price == decimal.Decimal("2.5")
    assert [payload["new"]["price"] for _, payload in rows()] == [1.5, 2.5]


def test_bulk_writes_record_one_notification_per_row_in_chunks():
    Writer.objects.bulk_create(Writer(name=str(n)) for n in range(250))
    assert [payload["new"]["name"] for _, payload in rows()] == [str(n) for n in range(250)]
    chunks = Notification.objects.order_by("id").values_list("size", "side")
    assert list(chunks) == [(sql.CHUNK, "new"), (sql.CHUNK, "new"), (250 - 2 * sql.CHUNK, "new")]
    Writer.objects.all().delete()
    deleted = [payload["old"]["name"] for trigger, payload in rows()
               if trigger == trigger_of("writer_deleted")]
    assert sorted(deleted, key=int) == [str(n) for n in range(250)]


def test_rows_carry_db_column_names_and_inherited_columns():
    legacy = Legacy.objects.create(title="t")
    restaurant = Restaurant.objects.create(name="r", serves_pizza=True)
    payloads = [payload["new"] for _, payload in rows()]
    assert payloads == [
        {"LegacyID": legacy.pk, "Title Text": "t", "writer": None},
        {"id": restaurant.pk, "name": "r", "place_ptr_id": restaurant.pk, "serves_pizza": True},
    ]


def test_numeric_precision_is_stored_exactly():
    Sku.objects.create(code="P", price=decimal.Decimal("12345678901234567890.12345678901234567890"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT payload->'new'->>'price' FROM pgcelery_notification")
        assert cursor.fetchone() == ("12345678901234567890.12345678901234567890",)


def test_include_fields_lets_only_the_named_columns_out_even_those_the_model_lacks():
    """An allow-list: a column added to the table outside the model stays in PostgreSQL."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE testapp_account ADD COLUMN ssn text DEFAULT '078-05-1120'")
    account = Account.objects.create(name="ada", password="pbkdf2$s3cret", api_token="tok")
    recorded = dict(rows())
    assert recorded[trigger_of("account_named")] == {
        "old": None, "new": {"id": account.pk, "name": "ada"}}
    # exclude_fields stays a deny-list: what it names is left out, the rest goes.
    assert recorded[trigger_of("account_created")]["new"] == {
        "id": account.pk, "name": "ada", "ssn": "078-05-1120"}
