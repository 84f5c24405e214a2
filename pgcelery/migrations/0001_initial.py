from django.db import migrations, models

from pgcelery import sql


class Migration(migrations.Migration):

    initial = True

    dependencies = [
    ]

    operations = [
        migrations.CreateModel(
            name='TaskRecord',
            fields=[
                ('task_id', models.CharField(max_length=255, primary_key=True, serialize=False)),
                ('created_at', models.DateTimeField(db_index=True)),
            ],
            options={
                'db_table': 'pgcelery_taskrecord',
            },
        ),
        migrations.CreateModel(
            name='Notification',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('uuid', models.UUIDField(help_text='Seeds the Celery task ids of this notification.')),
                ('channel', models.TextField(help_text='Dotted path of the channel.')),
                ('trigger', models.TextField(blank=True, help_text='Name of the trigger that recorded it; empty for notify().')),
                ('payload', models.JSONField()),
                ('context', models.JSONField(blank=True, null=True)),
                ('created_at', models.DateTimeField()),
                ('failed_at', models.DateTimeField(blank=True, null=True)),
                ('failure', models.TextField(blank=True, null=True)),
            ],
            options={
                'db_table': 'pgcelery_notification',
                'indexes': [models.Index(condition=models.Q(('failed_at__isnull', True)), fields=['id'], name='pgcelery_pending_idx')],
            },
        ),
        migrations.RunSQL(sql.CREATE_NOTIFY_FUNCTION, sql.DROP_NOTIFY_FUNCTION),
        migrations.RunSQL(sql.CREATE_NOTIFY_ROWS_FUNCTION, sql.DROP_NOTIFY_ROWS_FUNCTION),
    ]
