"""Listener tasks that fail for good, kept as failed deliveries: seen, retried, discarded."""

import json

import celery
import pytest

import pgcelery
from pgcelery.messages import ENVELOPE
from pgcelery.models import Notification
from tests import support
from tests.testapp.channels import HardLimited, Limited, Message, Outcome, Rejected
from tests.testapp.models import Event

pytestmark = pytest.mark.usefixtures("running")

FAILS = "tests.testapp.listeners.outcome_fails"


def events(listener):
    return list(Event.objects.filter(listener=listener))


def failed_deliveries():
    return list(Notification.objects.filter(failed_at__isnull=False))


def wait_for_failed(count):
    support.wait_until(lambda: len(failed_deliveries()) == count, what=f"{count} failed")
    support.settle()
    return failed_deliveries()


def test_a_failed_listener_is_one_failed_delivery_retried_to_it_alone_under_its_task_id():
    pgcelery.notify(Outcome, n=1)
    [failed] = wait_for_failed(1)
    [attempt] = events("outcome_attempt")
    assert (failed.channel, failed.listener, failed.task_id, failed.attempts) == (
        "tests.testapp.channels.Outcome", FAILS, attempt.task_id, 1)
    assert failed.failure == "RuntimeError: failing until allowed"
    assert failed.payload == {"n": 1}
    assert len(events("outcome_ok")) == 1  # the other listener succeeded and left nothing
    assert Notification.objects.count() == 1

    status = support.manage("pgcelery_status", "--json")
    assert status.returncode == 2
    assert json.loads(status.stdout)["channels"] == [{
        "channel": "tests.testapp.channels.Outcome", "pending": 0, "waiting": 0,
        "oldest_pending_seconds": None, "failed": 1,
        "failures": [{"id": failed.id, "reason": "RuntimeError: failing until allowed",
                      "listener": FAILS, "task_id": attempt.task_id}],
    }]

    Event.objects.create(listener="allow", data={})
    retried = support.manage("pgcelery_failed", "retry", "--id", str(failed.id))
    assert retried.returncode == 0, retried.stderr
    support.wait_until(lambda: events("outcome_fixed"), what="the retried delivery")
    support.settle()
    [fixed] = events("outcome_fixed")
    assert fixed.task_id == attempt.task_id
    assert len(events("outcome_attempt")) == 2
    assert len(events("outcome_ok")) == 1  # not run again
    assert not Notification.objects.exists()
    assert support.manage("pgcelery_status", "--json").returncode == 0


def test_a_retried_delivery_that_fails_again_is_recorded_again_once():
    pgcelery.notify(Outcome, n=2)
    [failed] = wait_for_failed(1)
    assert support.manage("pgcelery_failed", "retry", "--id", str(failed.id)).returncode == 0
    support.wait_until(lambda: len(events("outcome_attempt")) == 2, what="the second attempt")
    [again] = wait_for_failed(1)
    assert (again.listener, again.task_id, again.attempts) == (FAILS, failed.task_id, 1)
    assert again.id != failed.id
    discarded = support.manage("pgcelery_failed", "discard", "--id", str(again.id))
    assert discarded.returncode == 0
    assert not Notification.objects.exists()


def test_a_listener_past_its_soft_time_limit_is_a_failed_delivery():
    pgcelery.notify(Limited, hold=5.0)
    [failed] = wait_for_failed(1)
    assert failed.listener == "tests.testapp.listeners.limited"
    assert failed.failure.startswith("SoftTimeLimitExceeded")
    assert len(events("limited_started")) == 1


#: Celery reports a hard time limit and a rejected message as a task failure from 5.7 on.
needs_celery_57 = pytest.mark.skipif(
    celery.VERSION < (5, 7),
    reason="Celery before 5.7 sends no task_failure for hard time limits and rejections",
)


@needs_celery_57
def test_a_listener_past_its_hard_time_limit_is_a_failed_delivery():
    pgcelery.notify(HardLimited, hold=5.0)
    [failed] = wait_for_failed(1)
    [started] = Event.objects.filter(listener="limited_hard_started")
    assert (failed.listener, failed.task_id, failed.attempts) == (
        "tests.testapp.listeners.limited_hard", started.task_id, 1)
    assert failed.failure.startswith("TimeLimitExceeded")


@needs_celery_57
def test_a_listener_that_rejects_its_message_is_a_failed_delivery():
    pgcelery.notify(Rejected, n=1)
    [failed] = wait_for_failed(1)
    [run] = events("rejected")
    assert (failed.listener, failed.task_id) == ("tests.testapp.listeners.rejected", run.task_id)
    assert failed.failure.startswith("Reject")


def test_a_message_for_a_listener_the_worker_does_not_know_is_a_failed_delivery():
    """As when a listener is renamed while its messages wait in the broker: the worker
    discards them, and they are kept as failed deliveries of that listener instead."""
    renamed = "tests.testapp.listeners.renamed_away"
    envelope = {"channel": "tests.testapp.channels.Message", "trigger": "", "id": 1,
                "payload": json.dumps({"text": "waited"}), "context": None,
                "database": "default"}
    celery.current_app.send_task(renamed, kwargs={ENVELOPE: envelope}, task_id="waited-1")
    pgcelery.notify(Message, text="after it")
    [failed] = wait_for_failed(1)
    assert (failed.channel, failed.listener, failed.task_id, failed.payload) == (
        "tests.testapp.channels.Message", renamed, "waited-1", {"text": "waited"})
    assert failed.failure.startswith(f"NotRegistered: the worker does not know listener {renamed}")
    assert [event.data for event in events("message_received")] == [{"text": "after it"}]
    assert support.manage("pgcelery_status").returncode == 2
