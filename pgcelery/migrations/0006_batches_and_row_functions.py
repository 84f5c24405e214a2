"""Cheaper triggers and batch listeners.

Triggers execute pgcelery's trigger functions themselves, one call per row (or per
statement for bulk writes), and leave the notification's uuid empty: its task ids derive
from its id and created_at instead, which spares the writer generating random bytes.
Failed and remembered deliveries of batch listeners hold their notifications in one row
(side 'batch'); ``atomic=True`` batch listeners record one task id per notification.
Bridges of the previous release cannot read rows without a uuid: stop them before the apps'
triggers move to these functions.

Frozen: the SQL below is what this migration installs, for good.
"""

import importlib

from django.db import migrations, models

FIX_SEARCH_PATH = importlib.import_module(
    "pgcelery.migrations.0005_functions_run_as_owner").FIX_SEARCH_PATH

CREATE_FUNCTIONS = FIX_SEARCH_PATH + """
CREATE FUNCTION pgcelery_row_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
-- Row-level trigger. TG_ARGV: channel, pg channel, trigger, columns left out (text[]).
DECLARE
    hidden text[] := coalesce(TG_ARGV[3], '{}');
BEGIN
    -- Skipped inside pgtrigger.ignore(), as pgtrigger's own trigger functions are.
    IF NOT TG_NAME = ANY(coalesce(NULLIF(current_setting('pgtrigger.ignore', true), ''),
                                  '{}')::text[]) THEN
        INSERT INTO pgcelery_notification (channel, trigger, payload, context, created_at)
        VALUES (TG_ARGV[0], TG_ARGV[2],
                jsonb_build_object(
                    'old', CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) - hidden END,
                    'new', CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) - hidden END),
                NULLIF(current_setting('pgcelery.context', true), '')::jsonb, now());
        PERFORM pg_notify(TG_ARGV[1], '');
    END IF;
    -- The row unchanged: a BEFORE trigger never alters or cancels the write.
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$;

CREATE FUNCTION pgcelery_rows_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
-- Statement-level AFTER INSERT (new_rows) or DELETE (old_rows) trigger: the rows in
-- chunks of 100, one outbox row each. TG_ARGV as for pgcelery_row_v1.
DECLARE
    hidden text[] := coalesce(TG_ARGV[3], '{}');
BEGIN
    IF TG_NAME = ANY(coalesce(NULLIF(current_setting('pgtrigger.ignore', true), ''),
                              '{}')::text[]) THEN
        RETURN NULL;
    END IF;
    -- One statement per side: a transition table cannot be named by a variable without
    -- dynamic SQL, which would cost every write a parse and plan.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pgcelery_notification (channel, trigger, payload, size, side, context,
                                           created_at)
        SELECT TG_ARGV[0], TG_ARGV[2], chunks.chunk, chunks.size, 'new',
               NULLIF(current_setting('pgcelery.context', true), '')::jsonb, now()
        FROM (SELECT jsonb_agg(numbered.row ORDER BY numbered.n) AS chunk,
                     count(*) AS size, min(numbered.n) AS first
              FROM (SELECT to_jsonb(r) - hidden AS row, row_number() OVER () AS n
                    FROM new_rows AS r) AS numbered
              GROUP BY (numbered.n - 1) / 100) AS chunks
        ORDER BY chunks.first;
    ELSE
        INSERT INTO pgcelery_notification (channel, trigger, payload, size, side, context,
                                           created_at)
        SELECT TG_ARGV[0], TG_ARGV[2], chunks.chunk, chunks.size, 'old',
               NULLIF(current_setting('pgcelery.context', true), '')::jsonb, now()
        FROM (SELECT jsonb_agg(numbered.row ORDER BY numbered.n) AS chunk,
                     count(*) AS size, min(numbered.n) AS first
              FROM (SELECT to_jsonb(r) - hidden AS row, row_number() OVER () AS n
                    FROM old_rows AS r) AS numbered
              GROUP BY (numbered.n - 1) / 100) AS chunks
        ORDER BY chunks.first;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify(TG_ARGV[1], '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION pgcelery_record_tasks_v1(p_task_ids text[]) RETURNS SETOF text
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO pgcelery_taskrecord (task_id, created_at)
    SELECT task_id, now() FROM unnest(p_task_ids) AS ids (task_id)
    ON CONFLICT (task_id) DO NOTHING
    RETURNING task_id;
$$;

CREATE FUNCTION pgcelery_fail_delivery_v2(
    p_channel text, p_trigger text, p_payload jsonb, p_context jsonb, p_failure text,
    p_listener text, p_task_id text, p_attempts integer, p_size integer, p_side text
) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO pgcelery_notification (channel, trigger, payload, size, side, context,
                                       created_at, failed_at, failure, listener, task_id,
                                       attempts)
    VALUES (p_channel, p_trigger, p_payload, p_size, p_side, p_context, now(), now(),
            p_failure, p_listener, p_task_id, p_attempts)
    ON CONFLICT (task_id) WHERE task_id IS NOT NULL AND failed_at IS NOT NULL DO NOTHING;
$$;
"""

DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS pgcelery_row_v1();
DROP FUNCTION IF EXISTS pgcelery_rows_v1();
DROP FUNCTION IF EXISTS pgcelery_record_tasks_v1(text[]);
DROP FUNCTION IF EXISTS pgcelery_fail_delivery_v2(text, text, jsonb, jsonb, text, text, text,
                                                  integer, integer, text);
"""


class Migration(migrations.Migration):

    dependencies = [
        ('pgcelery', '0005_functions_run_as_owner'),
    ]

    operations = [
        migrations.AddField(
            model_name='delivery',
            name='side',
            field=models.TextField(blank=True, help_text="'batch' for a batch listener's delivery, whose payload lists its notifications.", null=True),
        ),
        migrations.AlterField(
            model_name='notification',
            name='side',
            field=models.TextField(blank=True, help_text="For a chunk: 'new' or 'old', which rows of the write it holds; 'batch' for a failed delivery of a batch listener, whose payload lists its notifications.", null=True),
        ),
        migrations.AlterField(
            model_name='notification',
            name='uuid',
            field=models.UUIDField(blank=True, help_text='Seeds the Celery task ids of this notification; where a trigger left it empty, its id and created_at do.', null=True),
        ),
        migrations.RunSQL(CREATE_FUNCTIONS, DROP_FUNCTIONS),
    ]
