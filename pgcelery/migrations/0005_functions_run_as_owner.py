"""The outbox is written only through pgcelery's functions, which run as their owner.

Writers (triggers, ``notify()``) and workers (failed deliveries, ``atomic=True`` task ids,
finished deliveries) then need no privilege on pgcelery's tables, only EXECUTE on these
functions. Each runs with a fixed search_path: the schema pgcelery was migrated into, and
pg_temp last (PostgreSQL searches pg_catalog before both, as it is not named), so no object
a caller creates can stand in for pgcelery's or for a built-in.

Frozen: the SQL below is what this migration installs, for good. (One fix was made to it:
its search_path named pg_catalog first, which also made pg_catalog the schema the
functions were created in; migration 0008 moves those out.)
"""

from django.db import migrations

#: For the statements after it, in this migration's transaction only: what ``SET
#: search_path FROM CURRENT`` fixes for each function, and where they are created. The
#: schema is the outbox's.
FIX_SEARCH_PATH = """
SELECT set_config(
    'search_path',
    (SELECT relnamespace::regnamespace::text FROM pg_class
     WHERE oid = 'pgcelery_notification'::regclass) || ', pg_temp',
    true
);
"""

RUN_WRITER_FUNCTIONS_AS_OWNER = FIX_SEARCH_PATH + """
ALTER FUNCTION pgcelery_notify_rows_v1(text, text, text, jsonb[])
    SECURITY DEFINER SET search_path FROM CURRENT;
ALTER FUNCTION pgcelery_notify_v1(text, text, text, jsonb)
    SECURITY DEFINER SET search_path FROM CURRENT;
ALTER FUNCTION pgcelery_notify_chunks_v1(text, text, text, text, jsonb[])
    SECURITY DEFINER SET search_path FROM CURRENT;
"""

RUN_WRITER_FUNCTIONS_AS_CALLER = """
ALTER FUNCTION pgcelery_notify_rows_v1(text, text, text, jsonb[])
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION pgcelery_notify_v1(text, text, text, jsonb)
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION pgcelery_notify_chunks_v1(text, text, text, text, jsonb[])
    SECURITY INVOKER RESET search_path;
"""

CREATE_WORKER_FUNCTIONS = FIX_SEARCH_PATH + """
CREATE FUNCTION pgcelery_record_task_v1(p_task_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO pgcelery_taskrecord (task_id, created_at) VALUES (p_task_id, now())
    ON CONFLICT (task_id) DO NOTHING;
    RETURN FOUND;
END;
$$;

CREATE FUNCTION pgcelery_fail_delivery_v1(
    p_channel text, p_trigger text, p_payload jsonb, p_context jsonb, p_failure text,
    p_listener text, p_task_id text, p_attempts integer
) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO pgcelery_notification (uuid, channel, trigger, payload, size, context,
                                       created_at, failed_at, failure, listener, task_id,
                                       attempts)
    VALUES (gen_random_uuid(), p_channel, p_trigger, p_payload, 1, p_context, now(), now(),
            p_failure, p_listener, p_task_id, p_attempts)
    ON CONFLICT (task_id) WHERE task_id IS NOT NULL AND failed_at IS NOT NULL DO NOTHING;
$$;

CREATE FUNCTION pgcelery_delivery_finished_v1(p_task_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM FROM pgcelery_delivery
    WHERE task_id = p_task_id AND finished_at IS NOT NULL
    FOR SHARE;
    RETURN FOUND;
END;
$$;

CREATE FUNCTION pgcelery_finish_delivery_v1(p_task_id text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO pgcelery_delivery (task_id, publishes, finished_at) VALUES (p_task_id, 1, now())
    ON CONFLICT (task_id) DO UPDATE SET finished_at = now();
$$;

CREATE FUNCTION pgcelery_postpone_delivery_v1(p_task_id text, p_seconds float8) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    UPDATE pgcelery_delivery SET redeliver_at = now() + period + make_interval(secs => p_seconds)
    WHERE task_id = p_task_id AND finished_at IS NULL;
$$;
"""

DROP_WORKER_FUNCTIONS = """
DROP FUNCTION IF EXISTS pgcelery_record_task_v1(text);
DROP FUNCTION IF EXISTS pgcelery_fail_delivery_v1(text, text, jsonb, jsonb, text, text, text,
                                                  integer);
DROP FUNCTION IF EXISTS pgcelery_delivery_finished_v1(text);
DROP FUNCTION IF EXISTS pgcelery_finish_delivery_v1(text);
DROP FUNCTION IF EXISTS pgcelery_postpone_delivery_v1(text, float8);
"""


class Migration(migrations.Migration):

    dependencies = [
        ('pgcelery', '0004_deliveries'),
    ]

    operations = [
        migrations.RunSQL(RUN_WRITER_FUNCTIONS_AS_OWNER, RUN_WRITER_FUNCTIONS_AS_CALLER),
        migrations.RunSQL(CREATE_WORKER_FUNCTIONS, DROP_WORKER_FUNCTIONS),
    ]
