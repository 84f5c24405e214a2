"""One test per assumption ``pgcelery.celery_internals`` makes about Celery and kombu."""

import os
import subprocess
import sys

import pytest
from celery import Celery, current_app
from celery.fixups.django import DjangoWorkerFixup

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


def test_delay_and_signatures_send_through_the_replaced_apply_async(app):
    @app.task
    def noop(n: int) -> int:
        return n

    sent = []
    celery_internals.replace_apply_async(
        noop, lambda args=None, kwargs=None, **options: sent.append((args, kwargs)))
    noop.delay(1)
    noop.s(2).apply_async()
    noop.si(3).delay()
    assert [tuple(args) for args, _ in sent] == [(1,), (2,), (3,)]


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
    route = celery_internals.route(app, {"queue": "stats"}, "a.task", None)
    assert route["queue"].name == "stats"
    with app.connection_for_write() as connection:
        producer = celery_internals.producer(app, connection)
        producer.maybe_declare(route["queue"])
        celery_internals.send_message(app, producer, "a.task", message, **route)
    [received] = support.take_messages("stats")
    assert received.headers["id"] == "sent-id"


@pytest.mark.e2e  # runs a manage.py command as a subprocess
def test_the_fallback_app_is_the_one_celery_makes_up(app):
    """In a process of its own: in this one, the test project's app is the default."""
    script = ("from celery import current_app\n"
              "from pgcelery import celery_internals\n"
              "print(celery_internals.is_fallback_app(current_app._get_current_object()))\n")
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True, timeout=60, cwd=support.ROOT, env={**os.environ,
                           "DJANGO_SETTINGS_MODULE": ""})
    assert found.stdout == "True\n"
    assert not celery_internals.is_fallback_app(app)
    assert not celery_internals.is_fallback_app(current_app._get_current_object())


def test_the_django_fixup_reads_db_reuse_max_from_the_apps_configuration(app):
    assert celery_internals.db_reuse_max(app) is None
    app.conf.CELERY_DB_REUSE_MAX = 7
    assert celery_internals.db_reuse_max(app) == 7
    assert DjangoWorkerFixup(app).db_reuse_max == 7
    # The test project's, set as CELERY_DB_REUSE_MAX in its Django settings.
    assert celery_internals.db_reuse_max(current_app) == 1000


def test_signal_receivers_are_the_live_ones_connected():
    from celery.signals import before_task_publish

    def kept(**_):
        pass

    def dropped(**_):
        pass

    before_task_publish.connect(kept, weak=False)
    before_task_publish.connect(dropped)  # weakly: gone with the function
    try:
        assert kept in celery_internals.signal_receivers(before_task_publish)
        assert dropped in celery_internals.signal_receivers(before_task_publish)
        del dropped
        assert all(receiver.__name__ != "dropped"
                   for receiver in celery_internals.signal_receivers(before_task_publish))
    finally:
        before_task_publish.disconnect(kept)


def test_current_is_the_object_behind_a_proxy(app):
    assert celery_internals.current(current_app) is current_app._get_current_object()
    assert celery_internals.current(app) is app


@pytest.mark.integration
def test_a_redis_channel_pings_and_encodes_bodies_as_it_stores_them():
    with current_app.connection_for_write() as connection:
        channel = connection.default_channel
        if not celery_internals.is_redis_channel(channel):
            pytest.skip("the broker is not Redis")
        celery_internals.redis_ping(channel)
        encoded = celery_internals.redis_body_encoder(channel)('{"k": 1}')
        assert channel.decode_body(encoded, channel.body_encoding) == b'{"k": 1}'
