"""``manage.py pgcelery_failed``: list, retry or discard failed notifications."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from pgcelery import conf, failures


class Command(BaseCommand):
    help = "List failed notifications, or retry or discard them (all, one channel's, or by id)."

    def add_arguments(self, parser):
        parser.add_argument("action", nargs="?", default="list",
                            choices=["list", "retry", "discard"])
        parser.add_argument("--channel", help="Only this channel's (dotted name).")
        parser.add_argument("--id", type=int, nargs="+", dest="ids", metavar="ID",
                            help="Only these notifications.")
        parser.add_argument("--database", default=None,
                            help="Database alias (default: the first of PGCELERY_DATABASES).")

    def handle(self, *args, action: str, channel, ids, database, **options) -> None:
        try:
            alias = conf.command_database(database)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        queryset = failures.failed(alias, channel=channel, ids=ids)
        if action == "list":
            for notification in queryset:
                delivery = (f" -> {notification.listener}[{notification.task_id}]"
                            if notification.listener else "")
                self.stdout.write(f"#{notification.pk} {notification.channel}{delivery} "
                                  f"failed {notification.failed_at:%Y-%m-%d %H:%M:%S}: "
                                  f"{notification.failure}")
            return
        count = failures.retry(queryset) if action == "retry" else failures.discard(queryset)
        verb = "queued again" if action == "retry" else "discarded"
        self.stdout.write(f"{count} failed notification(s) {verb}.")
