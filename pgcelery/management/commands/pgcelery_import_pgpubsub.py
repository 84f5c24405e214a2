"""``manage.py pgcelery_import_pgpubsub``: django-pgpubsub's stored notifications, moved."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from pgcelery import conf, pgpubsub_import


class Command(BaseCommand):
    help = ("Move the notifications django-pgpubsub stored (lock_notifications channels) into "
            "pgcelery's outbox, in one transaction.")

    def add_arguments(self, parser):
        parser.add_argument("--database", default=None,
                            help="Database alias (default: the first of PGCELERY_DATABASES).")
        parser.add_argument("--dry-run", action="store_true",
                            help="Say what would be moved and what cannot be; change nothing.")

    def handle(self, *args, database: str | None, dry_run: bool, **options) -> None:
        try:
            alias = conf.command_database(database)
            outcome = pgpubsub_import.move(alias, dry_run=dry_run)
        except (ImproperlyConfigured, pgpubsub_import.NoPgpubsubTable) as exc:
            raise CommandError(str(exc)) from exc
        rows = len({notification.row_id for notification in outcome.moved})
        verb = "would move" if dry_run else "moved"
        self.stdout.write(f"{rows} pgpubsub notification(s) {verb}, as "
                          f"{len(outcome.moved)} pgcelery notification(s).")
        for notification in outcome.moved:
            trigger = f" (trigger {notification.trigger})" if notification.trigger else ""
            self.stdout.write(f"  #{notification.row_id} -> {notification.channel}{trigger}")
        if outcome.left:
            self.stdout.write(f"{len(outcome.left)} left in {pgpubsub_import.TABLE}:")
            for row_id, reason in outcome.left:
                self.stdout.write(f"  #{row_id}: {reason}")
