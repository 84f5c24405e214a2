"""Django app config: discovers every installed app's ``listeners`` and ``tasks`` modules."""

from django.apps import AppConfig, apps
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules

from pgcelery import registry, tracing, trigger_migrations


class PgceleryConfig(AppConfig):
    name = "pgcelery"
    verbose_name = "pgcelery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from pgcelery import checks, privileges  # noqa: F401 - checks registers the checks

        post_migrate.connect(privileges.on_migrate, sender=self,
                             dispatch_uid="pgcelery.privileges")

        if not apps.is_installed("pgtrigger"):
            return  # pgcelery.E002 says so; the listeners' triggers would go nowhere
        trigger_migrations.install()
        # Importing the listeners registers their triggers (for makemigrations) and their
        # tasks (for the bridge and the workers) without the user importing them; Celery's
        # users keep tasks in tasks.py, and so may keep listeners there.
        autodiscover_modules(*registry.LISTENER_MODULES)
        if tracing.available():
            connection_created.connect(tracing.install, dispatch_uid="pgcelery.tracing")
