"""Bulk writes' rows are stored in chunks: the outbox gains a size, the rows function chunks.

Bridges of the previous release cannot read chunk rows: stop them before migrating.
"""

import importlib

from django.db import migrations, models

from pgcelery import sql

initial = importlib.import_module("pgcelery.migrations.0001_initial")


class Migration(migrations.Migration):

    dependencies = [
        ('pgcelery', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='notification',
            name='size',
            field=models.PositiveIntegerField(default=1, help_text='How many notifications the row holds: a bulk write\'s rows come in chunks.'),
        ),
        migrations.RunSQL(sql.SET_SIZE_DEFAULT, sql.DROP_SIZE_DEFAULT),
        migrations.AlterField(
            model_name='notification',
            name='payload',
            field=models.JSONField(help_text="The notification's payload; when size is more than 1, a list of them."),
        ),
        migrations.RunSQL(sql.CREATE_NOTIFY_ROWS_FUNCTION, initial.CREATE_NOTIFY_ROWS_FUNCTION),
    ]
