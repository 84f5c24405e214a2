"""The outbox, the task records of ``atomic=True`` listeners, and the functions triggers call.

Frozen: the SQL below is what this migration installs, for good. A change to a function
is a new function with the next version suffix, in a new migration.
"""

from django.db import migrations, models

CREATE_NOTIFY_ROWS_FUNCTION = """
CREATE OR REPLACE FUNCTION pgcelery_notify_rows_v1(
    p_channel text, p_pg_channel text, p_trigger text, p_payloads jsonb[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_payloads) > 0 THEN
        INSERT INTO pgcelery_notification (uuid, channel, trigger, payload, context, created_at)
        SELECT gen_random_uuid(), p_channel, p_trigger, rows.payload,
               NULLIF(current_setting('pgcelery.context', true), '')::jsonb, now()
        FROM unnest(p_payloads) WITH ORDINALITY AS rows (payload, position)
        ORDER BY rows.position;
        PERFORM pg_notify(p_pg_channel, '');
    END IF;
END;
$$;
"""

DROP_NOTIFY_ROWS_FUNCTION = """
DROP FUNCTION IF EXISTS pgcelery_notify_rows_v1(text, text, text, jsonb[]);
"""

CREATE_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION pgcelery_notify_v1(
    p_channel text, p_pg_channel text, p_trigger text, p_payload jsonb
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgcelery_notify_rows_v1(p_channel, p_pg_channel, p_trigger, ARRAY[p_payload]);
END;
$$;
"""

DROP_NOTIFY_FUNCTION = """
DROP FUNCTION IF EXISTS pgcelery_notify_v1(text, text, text, jsonb);
"""


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
        migrations.RunSQL(CREATE_NOTIFY_FUNCTION, DROP_NOTIFY_FUNCTION),
        migrations.RunSQL(CREATE_NOTIFY_ROWS_FUNCTION, DROP_NOTIFY_ROWS_FUNCTION),
    ]
