"""One test per assumption ``pgcelery.celery_internals`` makes about Celery and kombu."""

import pytest
from celery import Celery, current_app

from pgcelery import celery_internals
from tests import support


@pytest.fixture
def app():
    """A private app running tasks eagerly: no broker, nothing shared with other tests."""
    app = Celery("internals", set_as_current=False)
    app.conf.task_always_eager = True
    return app


def test_the_tracer_calls_the_replaced_run(app):
    @app.task
    def double(n: int) -> int:
        return 2 * n

    original = double.run
    celery_internals.replace_run(double, lambda n: ("replaced", original(n)))
    assert double.apply(kwargs={"n": 2}).get() == ("replaced", 4)


def test_apply_async_checks_arguments_through_the_header_unless_skipped(app):
    @app.task(typing=True)
    def takes_n(n: int) -> int:
        return n

    with pytest.raises(TypeError):
        takes_n.apply_async(kwargs={"envelope": 1})
    celery_internals.skip_argument_check(takes_n, lambda kwargs: "envelope" in kwargs)
    takes_n.apply_async(kwargs={"envelope": 1})  # not checked: the task itself fails eagerly
    with pytest.raises(TypeError):
        takes_n.apply_async(kwargs={"other": 1})


def test_exec_options_are_the_tasks_own(app):
    @app.task(serializer="pickle", time_limit=9, soft_time_limit=5)
    def limited() -> None:
        pass

    options = celery_internals.exec_options(limited)
    assert (options["serializer"], options["time_limit"], options["soft_time_limit"]) == (
        "pickle", 9, 5)


def test_a_message_carries_id_name_keyword_arguments_and_sender(app):
    message = celery_internals.create_message(
        app, "an-id", "a.task", {"k": "v"}, countdown=5, **celery_internals.message_identity(app)
    )
    assert (message.headers["id"], message.headers["task"]) == ("an-id", "a.task")
    assert message.headers["eta"] is not None
    assert message.headers["origin"] and message.properties["reply_to"] == app.thread_oid
    args, kwargs, _embed = message.body
    assert (tuple(args), kwargs) == ((), {"k": "v"})


@pytest.mark.integration
def test_send_message_publishes_to_the_routed_queue():
    app = current_app._get_current_object()
    support.purge_queues()
    message = celery_internals.create_message(app, "sent-id", "a.task", {})
    route = app.amqp.router.route({"queue": "stats"}, "a.task", (), {}, None)
    with app.connection_for_write() as connection:
        producer = app.amqp.Producer(connection)
        producer.maybe_declare(route["queue"])
        celery_internals.send_message(app, producer, "a.task", message, **route)
    [received] = support.take_messages("stats")
    assert received.headers["id"] == "sent-id"
