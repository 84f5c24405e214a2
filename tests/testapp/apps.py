from django.apps import AppConfig
from django.conf import settings


class TestappConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tests.testapp import tracing  # noqa: F401 - traces a worker when a test asks
        # Signed messages, where a test configures them: as a project's celery.py would.
        if getattr(settings, "CELERY_SECURITY_KEY", None):
            from celery import current_app

            current_app.setup_security()
