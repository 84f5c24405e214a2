import datetime
import select

import pytest
from django.db import transaction
from django.db.transaction import TransactionManagementError
from django.test import override_settings

import pgcelery
from pgcelery.connector import connector_for
from pgcelery.models import Notification
from tests.testapp.channels import Loose, Message, WithContext
from tests.testapp.models import Writer

pytestmark = [pytest.mark.connector]


def outbox():
    return list(Notification.objects.order_by("id").values("channel", "trigger", "payload",
                                                           "context"))


@pytest.mark.django_db
def test_notify_records_one_row_per_call_even_when_identical():
    pgcelery.notify(Message, text="same")
    pgcelery.notify("tests.testapp.channels.Message", text="same")
    row = {"channel": "tests.testapp.channels.Message", "trigger": "", "payload": {"text": "same"},
           "context": None}
    assert outbox() == [row, row]


@pytest.mark.django_db
def test_notify_refuses_bad_fields_and_writes_nothing():
    with pytest.raises(TypeError, match="Message.text: expected str, got int"):
        pgcelery.notify(Message, text=1)
    with pytest.raises(TypeError, match="missing required field 'text'"):
        pgcelery.notify(Message)
    with pytest.raises(ValueError, match="NUL"):
        pgcelery.notify(Message, text="\x00")
    with pytest.raises(pgcelery.UnknownChannel):
        pgcelery.notify("tests.testapp.channels.Missing", text="x")
    with pytest.raises(TypeError, match="is a TriggerChannel"):
        pgcelery.notify("tests.testapp.channels.WriterChannel")
    assert outbox() == []


@pytest.mark.django_db
def test_notify_on_an_explicit_database():
    pgcelery.notify(Message, using="default", text="x")
    assert len(outbox()) == 1


@pytest.mark.django_db(transaction=True)
def test_notify_wakes_listeners_once_per_transaction_with_an_empty_payload():
    listener = connector_for("default")
    listener.connect(["tests.testapp.channels.Message"])
    with transaction.atomic():
        for n in range(3):
            pgcelery.notify(Message, text=str(n))
    assert select.select([listener], [], [], 10) != ([], [], [])
    assert listener.wakeups() == [("tests.testapp.channels.Message", "")]
    listener.close()
    listener.close()


@pytest.mark.django_db(transaction=True)
def test_context_belongs_to_its_transaction_only():
    with pytest.raises(TransactionManagementError, match="inside transaction.atomic"):
        pgcelery.set_notification_context({"user": 1})
    with transaction.atomic():
        pgcelery.set_notification_context({"user": 1, "at": "now"})
        pgcelery.notify(WithContext, n=1)
        Writer.objects.create(name="by a trigger")
    pgcelery.notify(WithContext, n=2)
    with transaction.atomic():
        pgcelery.notify(WithContext, n=3)
        Writer.objects.create(name="later")
    assert [(row["channel"], row["context"]) for row in outbox()] == [
        ("tests.testapp.channels.WithContext", {"user": 1, "at": "now"}),
        ("tests.testapp.channels.WriterChannel", {"user": 1, "at": "now"}),
        ("tests.testapp.channels.WithContext", None),
        ("tests.testapp.channels.WithContext", None),
        ("tests.testapp.channels.WriterChannel", None),
    ]


@pytest.mark.django_db
def test_context_must_be_a_json_dict():
    with pytest.raises(TypeError, match="takes a dict"):
        pgcelery.set_notification_context(["x"])
    with pytest.raises(TypeError, match="needs a declared type"):
        pgcelery.set_notification_context({"day": datetime.date.today()})


@pytest.mark.django_db
def test_a_context_over_its_size_limit_is_refused_at_once():
    with transaction.atomic():
        pgcelery.set_notification_context({"blob": "x" * 65_000})  # under 64 KiB
        with pytest.raises(ValueError, match=r"the context is 5,242,\d+ bytes as JSON, over "
                                             r"PGCELERY_CONTEXT_MAX_BYTES \(65,536\)"):
            pgcelery.set_notification_context({"blob": "x" * (5 * 1024 * 1024)})
        with override_settings(PGCELERY_CONTEXT_MAX_BYTES=8 * 1024 * 1024):
            pgcelery.set_notification_context({"blob": "x" * (5 * 1024 * 1024)})


@pytest.mark.django_db
def test_a_value_nested_deeper_than_python_encodes_is_refused_at_once():
    deep: dict = {}
    level = deep
    for _ in range(5000):
        level["a"] = level = {}
    looping: dict = {}
    looping["self"] = looping
    for data in (deep, looping):
        with pytest.raises(ValueError, match="Loose.data: the value is nested deeper"):
            pgcelery.notify(Loose, data=data)
    assert outbox() == []
