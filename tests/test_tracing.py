"""The writer's OpenTelemetry trace, carried to the listener's task."""

import json
import subprocess
import sys

import pytest
from celery import current_app
from django.db import connection, transaction
from django.test import Client
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pgcelery
from blog.models import Post, PostReadCount
from pgcelery import messages, registry, tracing
from pgcelery.publish import Publisher
from tests import support
from tests.testapp.channels import Message
from tests.testapp.models import Writer

pytestmark = [pytest.mark.connector]

PROVIDER = TracerProvider()
EXPORTER = InMemorySpanExporter()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer(__name__)


def traceparent(span):
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def stored_contexts():
    with connection.cursor() as cursor:
        cursor.execute("SELECT context::text FROM pgcelery_notification ORDER BY id")
        return [json.loads(context) if context else None for (context,) in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_notify_and_trigger_writes_in_a_span_carry_its_trace_and_only_then():
    pgcelery.notify(Message, text="outside")
    Writer.objects.create(name="outside")
    with TRACER.start_as_current_span("request") as span:
        pgcelery.notify(Message, text="autocommit")
        Writer.objects.create(name="autocommit")  # a transaction of its own for the trace
        with transaction.atomic():
            pgcelery.set_notification_context({"user": 7})
            pgcelery.notify(Message, text="atomic")
            Writer.objects.create(name="atomic")
            Writer.objects.filter(name="atomic").update(name="atomic, renamed")
    trace_only = {tracing.TRACE_KEY: {"traceparent": traceparent(span)}}
    with_user = {"user": 7, **trace_only}
    assert stored_contexts() == [None, None, trace_only, trace_only, with_user, with_user,
                                 with_user]


def test_a_context_in_a_span_gets_the_trace_joined_to_it_and_the_trace_wins():
    with TRACER.start_as_current_span("request") as span:
        trace_only = {tracing.TRACE_KEY: {"traceparent": traceparent(span)}}
        assert json.loads(tracing.with_trace("{}")) == trace_only
        assert json.loads(tracing.with_trace('{"user":7}')) == {"user": 7, **trace_only}
        assert tracing.headers(tracing.with_trace('{"pgcelery.trace":"forged"}')) == (
            trace_only[tracing.TRACE_KEY])
    assert tracing.with_trace('{"user":7}') == '{"user":7}'


@pytest.mark.django_db(transaction=True)
def test_the_trace_is_set_once_per_transaction():
    statements = _Recorder()
    with (TRACER.start_as_current_span("request"), transaction.atomic(),
          connection.execute_wrapper(statements)):
        for n in range(3):
            Writer.objects.create(name=str(n))
    assert sum("pgcelery.context" in statement for statement in statements) == 1


class _Recorder(list):
    def __call__(self, execute, sql, params, many, context):
        self.append(sql)
        return execute(sql, params, many, context)


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_savepoint_takes_the_trace_with_it():
    with TRACER.start_as_current_span("request") as span, transaction.atomic():
        try:
            with transaction.atomic():
                Writer.objects.create(name="undone")
                raise RuntimeError
        except RuntimeError:
            pass
        Writer.objects.create(name="kept")
    assert stored_contexts() == [{tracing.TRACE_KEY: {"traceparent": traceparent(span)}}]


def test_the_listener_never_sees_the_trace():
    stored = json.dumps({"user": 7, tracing.TRACE_KEY: {"traceparent": "00-ab-cd-01"}})
    arguments = messages.arguments({"channel": "tests.testapp.channels.WithContext",
                                    "payload": '{"n": 1}', "context": stored})
    assert arguments["context"] == {"user": 7}


@pytest.mark.integration
def test_the_bridge_skips_opentelemetrys_publish_receivers_not_others():
    """Celery's instrumentation connects receivers to every publish signal; the messages
    carry the writer's trace without them, and the Redis fast path stays on."""
    listener = registry.find("tests.testapp.channels.Message", "",
                             "tests.testapp.listeners.message_received")
    CeleryInstrumentor().instrument(tracer_provider=PROVIDER)
    try:
        publisher = Publisher(current_app._get_current_object())
        assert publisher._route(listener).redis_list is not None
        publisher.close()
    finally:
        CeleryInstrumentor().uninstrument()


@pytest.mark.django_db(transaction=True)
def test_the_task_message_carries_the_trace_in_its_headers(bridge):
    with TRACER.start_as_current_span("request") as span:
        pgcelery.notify(Message, text="traced")
        Writer.objects.create(name="traced")
    pgcelery.notify(Message, text="not traced")
    bridge.drain()
    found = sorted(
        (message.headers["task"].rsplit(".", 1)[-1],
         json.loads(message.decode()[1][messages.ENVELOPE]["payload"]).get("text"),
         message.headers.get("traceparent"))
        for message in support.take_messages("celery"))
    assert found == [("message_received", "not traced", None),
                     ("message_received", "traced", traceparent(span)),
                     ("writer_inserted", None, traceparent(span))]


@pytest.mark.e2e
@pytest.mark.usefixtures("transactional_db")
def test_one_trace_from_the_request_to_the_listeners(spawn, tmp_path):
    """The real Django and Celery instrumentations: the request's span in this process, the
    listeners' spans in the worker's pool processes."""
    spans_file = tmp_path / "worker-spans.jsonl"
    spans_file.touch()
    spawn.worker(env=support.subprocess_env(PGCELERY_TEST_TRACE_FILE=str(spans_file)),
                 name="traced-worker")
    spawn.bridge()
    EXPORTER.clear()
    DjangoInstrumentor().instrument(tracer_provider=PROVIDER)
    try:
        client = Client()
        assert client.post("/authors/", {"name": "Traced"}).status_code == 201
        support.wait_until(lambda: Post.objects.filter(author__name="Traced").exists(), 60,
                           "the author's first post")
        post = Post.objects.get(author__name="Traced")
        assert client.get(f"/posts/{post.pk}/").status_code == 200
        support.wait_until(lambda: PostReadCount.objects.filter(post=post, count=1).exists(),
                           60, "the read to be counted")
    finally:
        DjangoInstrumentor().uninstrument()
    requests = {span.name: span.get_span_context() for span in EXPORTER.get_finished_spans()
                if span.kind == trace.SpanKind.SERVER}
    assert len(requests) == 2

    def run_span(listener):
        def found():
            for line in spans_file.read_text().splitlines():
                span = json.loads(line)
                if span["name"] == f"run/blog.listeners.{listener}":
                    return span
            return None

        support.wait_until(found, 30, f"the span of {listener}")
        return found()

    for listener, method in [("create_first_post_for_author", "POST"),
                             ("update_post_reads", "GET")]:
        [request] = [context for name, context in requests.items() if name.startswith(method)]
        span = run_span(listener)
        assert span["context"]["trace_id"] == f"0x{request.trace_id:032x}"
        assert span["parent_id"] == f"0x{request.span_id:016x}"


@pytest.mark.e2e
def test_nothing_is_installed_without_opentelemetry():
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import django\n"
        "django.setup()\n"
        "from django.db import connection\n"
        "import pgcelery\n"
        "from tests.testapp.channels import Message\n"
        "connection.ensure_connection()\n"
        "print(len(connection.execute_wrappers))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=support.ROOT,
                            env=support.subprocess_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.stdout == "0\n", result.stderr
    assert trace.get_current_span().get_span_context().is_valid is False
