"""pgcelery.testing as a user's test suite meets it: Django's TestCase and
TransactionTestCase, pytest-django's fixtures, and pgcelery's own pytest fixture; listeners
run in the test's process, with no bridge, broker or worker."""

import datetime

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.db import transaction
from django.db.transaction import TransactionManagementError
from django.test import TestCase, TransactionTestCase

import pgcelery
import pgcelery.testing
from pgcelery import registry
from pgcelery.models import Notification, Waiting
from tests import support
from tests.testapp.channels import Greeting, KeyedInOrder, Message, Outcome, Tally, WithContext
from tests.testapp.models import Event, Writer

pytestmark = [pytest.mark.connector]


def events(listener: str) -> list[dict]:
    return list(Event.objects.filter(listener=listener).order_by("pk")
                .values_list("data", flat=True))


class DeliverInTestCase(TestCase):
    """Nothing is committed: the notifications are seen in the test's own transaction."""

    def test_trigger_and_notify_listeners_run_once_each_and_leave_the_outbox(self):
        with pgcelery.testing.deliver():
            writer = Writer.objects.create(name="Ada")
            pgcelery.notify(Message, text="hello")
        [inserted] = events("writer_inserted")
        assert inserted["old"] is None and inserted["new"]["fields"]["name"] == "'Ada'"
        assert inserted["new"]["fields"]["id"] == repr(writer.pk)
        assert events("message_received") == [{"text": "hello"}]
        assert not Notification.objects.exists()

    def test_only_what_the_block_recorded_is_delivered(self):
        pgcelery.notify(Message, text="before")
        with pgcelery.testing.deliver():
            pgcelery.notify(Message, text="inside")
        assert events("message_received") == [{"text": "inside"}]
        assert Notification.objects.count() == 1
        assert pgcelery.testing.deliver_pending() == 1
        assert events("message_received") == [{"text": "inside"}, {"text": "before"}]

    def test_context_and_batches_as_the_bridge_sends_them(self):
        day = datetime.date(2026, 1, 2)
        with pgcelery.testing.deliver():
            with transaction.atomic():
                pgcelery.set_notification_context({"request": "r-1"})
                pgcelery.notify(WithContext, n=7)
            for n in range(3):
                pgcelery.notify(Tally, n=n, day=day)
        assert events("with_context") == [{"n": 7, "context": {"request": "r-1"}}]
        assert events("tallies_batched") == [{"ns": [0, 1, 2],
                                              "kinds": ["Tally(n: int, day: date)"]}]

    def test_keyed_listeners_run_each_notification_in_commit_order_without_waiting(self):
        with pgcelery.testing.deliver():
            for n in (1, 2, 3):
                pgcelery.notify(KeyedInOrder, key=1, n=n)
        assert [(data["n"], data["phase"]) for data in events("keyed_in_order")] == [
            (1, "start"), (1, "end"), (2, "start"), (2, "end"), (3, "start"), (3, "end")]
        assert not Waiting.objects.exists() and not Notification.objects.exists()

    def test_a_listener_exception_is_raised_out_of_the_block_after_the_others_ran(self):
        with pytest.raises(RuntimeError, match="failing until allowed"):  # noqa: SIM117
            with pgcelery.testing.deliver():
                pgcelery.notify(Outcome, n=1)
        assert events("outcome_ok") == [{"n": 1}]
        assert not Notification.objects.exists()

    def test_propagate_false_records_the_failed_delivery_as_a_worker_does(self):
        with pgcelery.testing.deliver(propagate=False):
            pgcelery.notify(Outcome, n=2)
        [failed] = Notification.objects.all()
        assert failed.listener == "tests.testapp.listeners.outcome_fails"
        assert failed.failure == "RuntimeError: failing until allowed"
        assert events("outcome_ok") == [{"n": 2}]

    def test_a_notification_no_listener_takes_fails_as_the_bridge_fails_it(self):
        with pytest.raises(pgcelery.testing.UndeliverableNotification,  # noqa: SIM117
                           match="unknown channel 'gone.channels.Removed'"):
            with pgcelery.testing.deliver():
                pgcelery.notify(Message, text="kept going")
                support.insert_raw("gone.channels.Removed")
        assert events("message_received") == [{"text": "kept going"}]
        assert Notification.objects.get().failure.startswith("unknown channel")


class DeliverInTransactionTestCase(TransactionTestCase):
    """Committed notifications, from async code."""

    async def test_anotify_from_async_code(self):
        with pytest.raises(SynchronousOnlyOperation):
            pgcelery.notify(Message, text="sync call in async code")
        with pytest.raises(TypeError, match="text"):
            await pgcelery.anotify(Message, text=1)
        await pgcelery.anotify(Message, text="from async")
        assert await sync_to_async(pgcelery.testing.deliver_pending)() == 1
        assert await sync_to_async(events)("message_received") == [{"text": "from async"}]

    async def test_aset_notification_context_needs_a_transaction(self):
        with pytest.raises(TransactionManagementError, match="inside transaction.atomic"):
            await pgcelery.aset_notification_context({"user": 5})
        with pytest.raises(ValueError, match="PGCELERY_CONTEXT_MAX_BYTES"):
            await pgcelery.aset_notification_context({"big": "x" * 70_000})


class AsyncInTestCase(TestCase):
    """In a TestCase the test's transaction is open on Django's database thread, where the
    async forms write."""

    async def test_aset_notification_context_joins_the_transaction(self):
        await pgcelery.aset_notification_context({"user": 5})
        await pgcelery.anotify(WithContext, n=3)
        assert await sync_to_async(pgcelery.testing.deliver_pending)() == 1
        assert await sync_to_async(events)("with_context") == [{"n": 3, "context": {"user": 5}}]


def test_the_pytest_fixture_is_deliver_itself(pgcelery_deliver, db):
    assert pgcelery_deliver is pgcelery.testing.deliver
    with pgcelery_deliver():
        Writer.objects.create(name="Grace")
    assert [event["new"]["fields"]["name"] for event in events("writer_inserted")] == ["'Grace'"]


def test_with_transactional_db(pgcelery_deliver, transactional_db):
    with pgcelery_deliver():
        pgcelery.notify(Greeting, name="from tasks.py")
    assert events("greeted") == [{"name": "from tasks.py"}]


def test_listeners_in_an_apps_tasks_module_are_found():
    assert [listener.task_name for listener in registry.listeners_for(
        "tests.testapp.channels.Greeting", "")] == ["tests.testapp.tasks.greeted"]
