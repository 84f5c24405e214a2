"""Code written for django-pgpubsub runs after ``s/pgpubsub/pgcelery/``: its forms, in the
test project's own channels and listeners."""

import datetime

import pgtrigger
import pytest

import pgcelery
from pgcelery import messages, payloads, triggers
from pgcelery.models import Notification
from tests import support
from tests.testapp.channels import Reads, WriterChannel
from tests.testapp.models import Writer


def test_a_channels_name_is_its_dotted_path():
    assert Reads.name() == "tests.testapp.channels.Reads"
    assert WriterChannel.name() == "tests.testapp.channels.WriterChannel"


@pytest.mark.django_db
def test_a_field_defaulting_to_none_takes_none_whatever_its_annotation():
    pgcelery.notify(Reads, model_id=1, model_type="Post")
    pgcelery.notify(Reads, model_id=2, model_type="Post", date=None)
    pgcelery.notify(Reads, model_id=3, model_type="Post", date=datetime.date(2026, 12, 3))
    decoded = [payloads.decode_fields(Reads, row.payload)["date"]
               for row in Notification.objects.order_by("id")]
    assert decoded == [None, None, datetime.date(2026, 12, 3)]
    with pytest.raises(TypeError, match=r"Reads\.model_id: expected int, got NoneType"):
        pgcelery.notify(Reads, model_id=None, model_type="Post")


@pytest.mark.django_db
def test_tuple_of_one_type_holds_any_number_of_it():
    for tags in [(), ("a",), ("a", "b"), ("a", "b", "c")]:
        pgcelery.notify(Reads, model_id=1, model_type="Post", tags=tags)
    decoded = [payloads.decode_fields(Reads, row.payload)["tags"]
               for row in Notification.objects.order_by("id")]
    assert decoded == [(), ("a",), ("a", "b"), ("a", "b", "c")]
    with pytest.raises(TypeError, match=r"Reads\.tags: expected str, got int 2"):
        pgcelery.notify(Reads, model_id=1, model_type="Post", tags=("a", 2))


@pytest.mark.django_db(transaction=True)
def test_trigger_listener_takes_a_pgtrigger_trigger(bridge):
    """``writer_deleted`` is declared in pgpubsub's form: its trigger is the one the keyword
    form makes for After Delete, and it fires."""
    keyword_form = triggers.register(WriterChannel, when=pgtrigger.After,
                                     operation=pgtrigger.Delete, condition=None)
    assert support.trigger_of("writer_deleted") == keyword_form
    Writer.objects.create(name="gone").delete()
    bridge.drain()
    tasks = [message.headers["task"] for message in support.take_messages("celery")]
    assert tasks.count("tests.testapp.listeners.writer_deleted") == 1


@pytest.mark.parametrize(("arguments", "message"), [
    ({"trigger": pgtrigger.Trigger(name="t", when=pgtrigger.After, operation=pgtrigger.Delete),
      "when": pgtrigger.After}, "a pgtrigger Trigger or when=, operation= and condition=, not "
                               "both"),
    ({}, r"needs when= and operation="),
    ({"trigger": "after delete"}, "takes a pgtrigger Trigger, not 'after delete'"),
])
def test_trigger_listener_says_what_it_needs(arguments, message):
    with pytest.raises(TypeError, match=message):
        pgcelery.trigger_listener(WriterChannel, **arguments)


def test_the_listener_receives_pgpubsub_style_fields():
    envelope = {"channel": "tests.testapp.channels.Reads", "context": None,
                "payload": '{"model_id": 4, "model_type": "Post", "date": null, '
                           '"tags": ["x", "y"]}'}
    assert messages.arguments(envelope) == {
        "model_id": 4, "model_type": "Post", "date": None, "tags": ("x", "y"), "context": {}}
