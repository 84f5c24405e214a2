"""OpenTelemetry in a test worker, as a project would set it up: the SDK, and Celery's
instrumentation in each pool process, its spans written as JSON lines to a file the test
reads (``PGCELERY_TEST_TRACE_FILE``)."""

import os

from celery.signals import worker_process_init


def export_to(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process' lifetime
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
        out=out, formatter=lambda span: span.to_json(indent=None) + "\n")))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()


@worker_process_init.connect(weak=False)
def _trace_pool_process(**kwargs):
    path = os.environ.get("PGCELERY_TEST_TRACE_FILE")
    if path:
        export_to(path)
