import os

from django.apps import AppConfig


class BenchappConfig(AppConfig):
    name = "bench.benchapp"
    label = "benchapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # What a project tracing its processes runs in the bridge: the SDK, sampling every
        # span, and Celery's instrumentation (publish-signal receivers).
        if os.environ.get("BENCH_TRACING"):
            from opentelemetry import trace
            from opentelemetry.instrumentation.celery import CeleryInstrumentor
            from opentelemetry.sdk.trace import TracerProvider

            trace.set_tracer_provider(TracerProvider())
            CeleryInstrumentor().instrument()
