"""``manage.py pgcelery_status``: the outbox backlog per channel, usable as a health check."""

import json

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from pgcelery import conf
from pgcelery.status import channel_status

EXIT_FAILED = 2


class Command(BaseCommand):
    help = (
        "Show pending and failed notifications per channel. "
        "Exit 0 when none failed, 2 when some did, 1 when the status cannot be read."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print JSON.")
        parser.add_argument(
            "--database", nargs="+", metavar="ALIAS", dest="databases",
            help="Database aliases to inspect (default: PGCELERY_DATABASES). With several, "
                 "each channel's entry names its database.",
        )

    def handle(self, *args, as_json: bool, databases: list[str] | None, **options) -> None:
        try:
            aliases = (conf.database_aliases("--database", databases) if databases
                       else conf.databases())
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        status = []
        for alias in aliases:
            entries = self._read(alias)
            if len(aliases) > 1:
                entries = [{"database": alias, **entry} for entry in entries]
            status += entries
        self.stdout.write(self._render_json(status) if as_json else self._render_table(status))
        if any(entry["failed"] for entry in status):
            raise SystemExit(EXIT_FAILED)

    @staticmethod
    def _read(alias: str) -> list[dict]:
        try:
            return channel_status(alias)
        except DatabaseError as exc:
            raise CommandError(
                f"Cannot read the pgcelery outbox on database {alias!r}: {str(exc).strip()}. "
                "Check that the database is up and `manage.py migrate pgcelery` has run."
            ) from exc

    @staticmethod
    def _render_json(status) -> str:
        return json.dumps({"channels": status}, indent=2)

    @staticmethod
    def _render_table(status) -> str:
        if not status:
            return "No pending or failed notifications."
        lines = [f"{'CHANNEL':<50} {'PENDING':>8} {'WAITING':>8} {'OLDEST (s)':>11} "
                 f"{'FAILED':>7}"]
        for entry in status:
            oldest = entry["oldest_pending_seconds"]
            name = f"{entry['database']}: {entry['channel']}" if "database" in entry else (
                entry["channel"])
            lines.append(
                f"{name:<50} {entry['pending']:>8} {entry['waiting']:>8} "
                f"{'-' if oldest is None else f'{oldest:.1f}':>11} {entry['failed']:>7}"
            )
            lines += [f"    #{f['id']}: {f['reason']}" for f in entry["failures"]]
        return "\n".join(lines)
