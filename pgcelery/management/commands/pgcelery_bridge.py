"""``manage.py pgcelery_bridge``: the process that turns notifications into Celery tasks."""

import logging

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from pgcelery import channels, conf
from pgcelery.bridge import Bridge
from pgcelery.connector import MissingPrivileges
from pgcelery.publish import celery_app


class Command(BaseCommand):
    help = "Publish every committed pgcelery notification as Celery tasks, until stopped."

    def add_arguments(self, parser):
        parser.add_argument(
            "--channels", nargs="+", metavar="CHANNEL", dest="channel_names",
            help="Dotted channel names to serve; other channels' rows are left to other bridges.",
        )
        parser.add_argument(
            "--database", nargs="+", metavar="ALIAS", dest="databases",
            help="Database aliases to drain (default: PGCELERY_DATABASES).",
        )
        parser.add_argument(
            "--loglevel", default="INFO",
            choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], type=str.upper,
        )

    def handle(self, *args, channel_names: list[str] | None, databases: list[str] | None,
               loglevel: str, **options) -> None:
        logging.basicConfig(
            level=logging.WARNING,
            format="[%(asctime)s: %(levelname)s/pgcelery_bridge] %(message)s",
        )
        logging.getLogger("pgcelery").setLevel(loglevel)
        try:
            conf.check()
            if databases:
                conf.database_aliases("--database", databases)
            for name in channel_names or ():
                channels.resolve(name)
        except (ImproperlyConfigured, LookupError, TypeError) as exc:
            raise CommandError(str(exc)) from exc
        app = celery_app()
        logging.getLogger(__name__).info("Publishing to %s", app.connection_for_write().as_uri())
        try:
            Bridge(app, databases=databases, channels=channel_names).run()
        except MissingPrivileges as exc:
            raise CommandError(str(exc)) from exc
