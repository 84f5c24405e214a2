import threading

import pytest
from celery import shared_task
from django.db import connection, connections

import pgcelery
from pgcelery import messages, registry, worker
from pgcelery.models import Notification, TaskRecord
from tests import support
from tests.testapp.channels import Counted, Message, Routed, WriterChannel
from tests.testapp.listeners import (
    count_once,
    message_received,
    outcome_fails,
    routed,
    writer_inserted,
)
from tests.testapp.models import Event, Writer


def test_a_decorated_function_becomes_a_registered_celery_task():
    assert message_received.name == "tests.testapp.listeners.message_received"
    assert callable(message_received.delay) and callable(message_received.apply_async)
    [found] = registry.listeners_for("tests.testapp.channels.Message", "")
    assert found == registry.Listener(message_received.name, "tests.testapp.channels.Message", "")


def test_a_decorated_task_is_registered_as_is_with_its_dispatch_options():
    assert routed.name == "tests.testapp.listeners.routed"
    [found] = registry.listeners_for("tests.testapp.channels.Routed", "")
    assert found.task_name == routed.name
    assert found.options == {"queue": "tests.routed", "priority": 7, "countdown": 1,
                              "expires": 600}


def test_task_options_apply_only_to_plain_functions():
    @shared_task(name="tests.throwaway")
    def throwaway(n):
        return n

    with pytest.raises(TypeError, match="apply only when a listener decorates a plain function"):
        pgcelery.listener(Routed, max_retries=3)(throwaway)


def test_decorators_refuse_the_wrong_kind_of_channel():
    with pytest.raises(TypeError, match="listener\\(\\) takes a Channel"):
        pgcelery.listener(WriterChannel)
    with pytest.raises(TypeError, match="trigger_listener\\(\\) takes a TriggerChannel"):
        pgcelery.post_insert_listener(Message)


@pytest.mark.django_db
def test_direct_calls_behave_as_before():
    message_received(text="direct")
    assert count_once.apply(kwargs={"n": 1, "fail": False, "hold": 0}).successful()
    assert sorted(Event.objects.values_list("listener", "data")) == [
        ("count_once", {"n": 1}), ("message_received", {"text": "direct"})
    ]


def envelope_of_last_notification():
    row = Notification.objects.order_by("-id").values_list(
        "id", "uuid", "channel", "trigger", "payload", "context").first()
    with connection.cursor() as cursor:
        cursor.execute("SELECT payload::text FROM pgcelery_notification WHERE id = %s", [row[0]])
        payload = cursor.fetchone()[0]
    listener = registry.Listener("unused", row[2], row[3])
    delivery = messages.Delivery(
        listener, "unused", [messages.Row(row[0], 0, row[1], row[2], row[3], payload, None)])
    return {messages.ENVELOPE: delivery.envelope("default")}


@pytest.mark.django_db(transaction=True)
def test_a_listener_task_opens_the_notification_it_is_sent():
    pgcelery.notify(Message, text="opened")
    result = message_received.apply(kwargs=envelope_of_last_notification(), task_id="t-open")
    assert result.successful()
    assert list(Event.objects.values_list("listener", "data", "task_id")) == [
        ("message_received", {"text": "opened"}, "t-open")
    ]


def count_once_events():
    return Event.objects.filter(listener="count_once").count()


@pytest.mark.django_db(transaction=True)
def test_atomic_listener_runs_once_per_task_id_and_only_committed_runs_count():
    pgcelery.notify(Counted, n=1, fail=True)
    kwargs = envelope_of_last_notification()
    assert count_once.apply(kwargs=kwargs, task_id="t-atomic").failed()
    assert count_once_events() == 0
    assert not TaskRecord.objects.exists()

    Event.objects.create(listener="allow", data={})
    assert count_once.apply(kwargs=kwargs, task_id="t-atomic").successful()
    # A repeat is a no-op that stores nothing, leaving the first run's result in place.
    assert count_once.apply(kwargs=kwargs, task_id="t-atomic").state == "IGNORED"
    assert count_once_events() == 1
    assert list(TaskRecord.objects.values_list("task_id", flat=True)) == ["t-atomic"]

    assert count_once.apply(kwargs=kwargs, task_id="t-other").successful()
    assert count_once_events() == 2


@pytest.mark.django_db(transaction=True)
def test_atomic_listener_runs_once_when_the_same_task_runs_concurrently():
    pgcelery.notify(Counted, n=1, hold=1.0)
    kwargs = envelope_of_last_notification()
    results = []

    def run():
        results.append(count_once.apply(kwargs=kwargs, task_id="t-race").state)
        connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["IGNORED", "IGNORED", "SUCCESS"]
    assert count_once_events() == 1


@pytest.mark.django_db(transaction=True)
def test_atomic_holds_for_a_task_id_run_without_the_bridges_envelope():
    pgcelery.notify(Counted, n=1)
    assert count_once.apply(kwargs=envelope_of_last_notification(), task_id="t-x").successful()
    plain = {"n": 1, "fail": False, "hold": 0}
    assert count_once.apply(kwargs=plain, task_id="t-x").state == "IGNORED"
    assert count_once.apply(kwargs=plain, task_id="t-plain").successful()
    assert count_once.apply(kwargs=plain, task_id="t-plain").state == "IGNORED"
    assert count_once_events() == 2
    assert sorted(TaskRecord.objects.values_list("task_id", flat=True)) == ["t-plain", "t-x"]
    count_once(n=1, fail=False, hold=0)  # a direct call has no task id: it just runs
    assert count_once_events() == 3


def test_argument_checks_stay_and_let_notifications_through():
    envelope = {messages.ENVELOPE: {"channel": "tests.testapp.channels.Routed"}}
    with pytest.raises(TypeError, match="unexpected keyword argument 'wrong'"):
        routed.apply_async(kwargs={"wrong": 1})
    try:
        routed.apply_async(kwargs=envelope, queue="tests.routed")
    finally:
        support.purge_queues()


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_failed_delivery_that_cannot_be_recorded_is_logged_whole(caplog):
    """The database is down when the worker records a failure: the log keeps all of it."""
    settings = connections["other"].settings_dict
    name = settings["NAME"]
    connections["other"].close()
    settings["NAME"] = "pgcelery_no_such_database"
    envelope = {"id": 7, "channel": "tests.testapp.channels.Outcome", "trigger": "",
                "payload": '{"n": 1}', "context": None, "database": "other"}
    try:
        with caplog.at_level("ERROR", logger="pgcelery.worker"):
            worker.record_failed_delivery(sender=outcome_fails, task_id="t-lost",
                                          exception=RuntimeError("boom"),
                                          kwargs={messages.ENVELOPE: envelope})
    finally:
        connections["other"].close()
        settings["NAME"] = name
    [logged] = caplog.records
    assert logged.getMessage().startswith(
        "Could not record the failed delivery of task tests.testapp.listeners.outcome_fails"
        "[t-lost] (notification 7 on tests.testapp.channels.Outcome, failed with "
        "RuntimeError: boom) in database 'other'")
    assert logged.getMessage().endswith('its payload was {"n": 1}')


@pytest.mark.django_db
def test_delay_sends_a_trigger_listeners_model_instances_as_their_rows():
    """As any Celery task: ``.delay(None, instance)`` makes a JSON message, and the task
    receives the instance rebuilt from its row, as from the trigger."""
    support.purge_queues()
    writer = Writer(pk=41, name="Ada", email="ada@example.com")
    writer_inserted.delay(None, new=writer)
    [message] = support.take_messages("celery")
    args, kwargs, _ = message.decode()
    assert kwargs["new"]["row"] == {"id": "41", "name": "Ada", "email": "ada@example.com"}
    writer_inserted.apply(args=args, kwargs=kwargs)
    [seen] = Event.objects.filter(listener="writer_inserted").values_list("data", flat=True)
    assert seen["old"] is None
    assert seen["new"] == {"type": "Writer", "adding": True, "fields": {
        "id": "41", "name": "'Ada'", "email": "'ada@example.com'"}}
