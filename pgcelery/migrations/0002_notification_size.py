"""Bulk writes' rows are stored in chunks: the outbox gains a size and a side, and statement
triggers record through the new chunks function.

Bridges of the previous release cannot read chunk rows: stop them before migrating.
"""

from django.db import migrations, models

# Frozen with this migration, as in 0001.
SET_SIZE_DEFAULT = """
ALTER TABLE pgcelery_notification ALTER COLUMN size SET DEFAULT 1
"""

DROP_SIZE_DEFAULT = """
ALTER TABLE pgcelery_notification ALTER COLUMN size DROP DEFAULT
"""

CREATE_NOTIFY_CHUNKS_FUNCTION = """
CREATE OR REPLACE FUNCTION pgcelery_notify_chunks_v1(
    p_channel text, p_pg_channel text, p_trigger text, p_side text, p_chunks jsonb[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_chunks) > 0 THEN
        INSERT INTO pgcelery_notification (uuid, channel, trigger, payload, size, side, context, created_at)
        SELECT gen_random_uuid(), p_channel, p_trigger, chunks.chunk,
               jsonb_array_length(chunks.chunk), p_side,
               NULLIF(current_setting('pgcelery.context', true), '')::jsonb, now()
        FROM unnest(p_chunks) WITH ORDINALITY AS chunks (chunk, position)
        ORDER BY chunks.position;
        PERFORM pg_notify(p_pg_channel, '');
    END IF;
END;
$$;
"""

DROP_NOTIFY_CHUNKS_FUNCTION = """
DROP FUNCTION IF EXISTS pgcelery_notify_chunks_v1(text, text, text, text, jsonb[]);
"""



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
        migrations.RunSQL(SET_SIZE_DEFAULT, DROP_SIZE_DEFAULT),
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
        migrations.RunSQL(CREATE_NOTIFY_CHUNKS_FUNCTION, DROP_NOTIFY_CHUNKS_FUNCTION),
    ]
