from django.apps import AppConfig


class PgpubsubPortConfig(AppConfig):
    """django-pgpubsub's test project, rewritten, run on pgcelery after the rename."""

    name = "tests.pgpubsub_port"
    label = "pgpubsub_port"
    default_auto_field = "django.db.models.BigAutoField"
