"""``manage.py pgcelery_bridge``: the process that turns notifications into Celery tasks."""

import logging

from django.core.management.base import BaseCommand, CommandError

from pgcelery import channels, conf
from pgcelery.bridge import Bridge
from pgcelery.publish import celery_app


class Command(BaseCommand):
    help = "Publish every committed pgcelery notification as Celery tasks, until stopped."

    def add_arguments(self, parser):
        parser.add_argument(
            "--channels", nargs="+", metavar="CHANNEL", dest="channel_names",
            help="Dotted channel names to serve; other channels' rows are left to other bridges.",
        )
        parser.add_argument(
            "--database", default=None,
            help="Database alias to drain (default: PGCELERY_DATABASE).",
        )
        parser.add_argument(
            "--loglevel", default="INFO",
            choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], type=str.upper,
        )

    def handle(self, *args, channel_names: list[str] | None, database: str | None,
               loglevel: str, **options) -> None:
        logging.basicConfig(
            level=logging.WARNING,
            format="[%(asctime)s: %(levelname)s/pgcelery_bridge] %(message)s",
        )
        logging.getLogger("pgcelery").setLevel(loglevel)
        for name in channel_names or ():
            try:
                channels.resolve(name)
            except (LookupError, TypeError) as exc:
                raise CommandError(str(exc)) from exc
        app = celery_app()
        logging.getLogger(__name__).info("Publishing to %s", app.connection_for_write().as_uri())
        Bridge(app, database=database or conf.database(), channels=channel_names).run()
