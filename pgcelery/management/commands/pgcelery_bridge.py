"""``manage.py pgcelery_bridge``: the process that turns notifications into Celery tasks."""

import logging

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections

from pgcelery import channels, checks, conf, logs
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
        parser.add_argument(
            "--log-format", default="text", choices=logs.FORMATS,
            help="json: one JSON object per line (time, level, message, channel, "
                 "notification, task_id where they apply).",
        )
        parser.add_argument(
            "--metrics-port", type=int, metavar="PORT",
            help="Serve Prometheus metrics at /metrics and a health probe at /health on this "
                 "port (default: PGCELERY_METRICS_PORT; off when unset).",
        )
        parser.add_argument(
            "--metrics-address", metavar="ADDRESS",
            help="Address to serve them on (default: PGCELERY_METRICS_ADDRESS, 127.0.0.1).",
        )

    def handle(self, *args, channel_names: list[str] | None, databases: list[str] | None,
               loglevel: str, log_format: str, metrics_port: int | None,
               metrics_address: str | None, **options) -> None:
        logs.configure(loglevel, log_format)
        try:
            conf.check()
            if databases:
                conf.database_aliases("--database", databases)
            if metrics_port is not None:
                conf.tcp_port("--metrics-port", metrics_port)
            for name in channel_names or ():
                channels.resolve(name)
        except (ImproperlyConfigured, LookupError, TypeError) as exc:
            raise CommandError(str(exc)) from exc
        app = celery_app()
        logger = logging.getLogger(__name__)
        for database in databases or conf.databases():
            for message in _uninstalled_triggers(database):
                logger.error(message)
        logger.info("Publishing to %s", app.connection_for_write().as_uri())
        try:
            Bridge(app, databases=databases, channels=channel_names, metrics_port=metrics_port,
                   metrics_address=metrics_address).run()
        except (MissingPrivileges, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc


def _uninstalled_triggers(database: str) -> list[str]:
    """What ``checks.uninstalled_listener_triggers`` finds; nothing if the database is
    down (the bridge says so, and waits for it)."""
    try:
        return checks.uninstalled_listener_triggers(database)
    except DatabaseError:
        return []
    finally:
        connections[database].close()
