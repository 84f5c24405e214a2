"""``migrate pgcelery zero`` refuses while notifications are pending, instead of dropping
them with the outbox.

Unapplying runs this migration's reverse first, before any table or function goes.
"""

from django.db import migrations


class PendingNotifications(Exception):
    """The outbox still holds notifications that no bridge has published."""


def refuse_if_pending(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pgcelery_notification WHERE failed_at IS NULL")
        pending = cursor.fetchone()[0]
    if pending:
        raise PendingNotifications(
            f"Database {schema_editor.connection.alias!r} holds {pending} pending "
            "notification(s) that unapplying pgcelery's migrations would drop. Run the bridge "
            "until `python manage.py pgcelery_status` shows none pending (or delete them from "
            "pgcelery_notification on purpose), then migrate pgcelery zero again."
        )


class Migration(migrations.Migration):

    dependencies = [
        ("pgcelery", "0006_batches_and_row_functions"),
    ]

    operations = [
        migrations.RunPython(migrations.RunPython.noop, refuse_if_pending),
    ]
