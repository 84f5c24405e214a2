"""Django app config: discovers every installed app's ``listeners`` module."""

from django.apps import AppConfig, apps
from django.db.backends.signals import connection_created
from django.utils.module_loading import autodiscover_modules

from pgcelery import tracing


class PgceleryConfig(AppConfig):
    name = "pgcelery"
    verbose_name = "pgcelery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from pgcelery import checks  # noqa: F401 - registers the system checks

        if not apps.is_installed("pgtrigger"):
            return  # pgcelery.E002 says so; the listeners' triggers would go nowhere
        # Importing the listeners registers their triggers (for makemigrations) and their
        # tasks (for the bridge and the workers) without the user importing them.
        autodiscover_modules("listeners")
        if tracing.available():
            connection_created.connect(tracing.install, dispatch_uid="pgcelery.tracing")
