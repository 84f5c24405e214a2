"""Bulk writes' rows are stored in chunks: the outbox gains a size and a side, and statement
triggers record through the new chunks function.

Bridges of the previous release cannot read chunk rows: stop them before migrating.
"""

from django.db import migrations, models

from pgcelery import sql


class Migration(migrations.Migration):

    dependencies = [
        ('pgcelery', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='notification',
            name='size',
            field=models.PositiveIntegerField(default=1, help_text='How many notifications the row holds.'),
        ),
        migrations.RunSQL(sql.SET_SIZE_DEFAULT, sql.DROP_SIZE_DEFAULT),
        migrations.AddField(
            model_name='notification',
            name='side',
            field=models.TextField(blank=True, help_text="For a chunk: 'new' or 'old', which rows of the write it holds.", null=True),
        ),
        migrations.AlterField(
            model_name='notification',
            name='payload',
            field=models.JSONField(help_text="The notification's payload; for a chunk of a bulk write, the list of its rows."),
        ),
        migrations.RunSQL(sql.CREATE_NOTIFY_CHUNKS_FUNCTION, sql.DROP_NOTIFY_CHUNKS_FUNCTION),
    ]
