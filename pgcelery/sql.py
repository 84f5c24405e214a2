"""Every SQL statement pgcelery runs, in one place.

Stored functions carry a version suffix: a changed function gets a new name in a new
migration, so the old and the new release of an app can run side by side in a deploy.
"""

OUTBOX = "pgcelery_notification"
TASK_RECORDS = "pgcelery_taskrecord"

#: Records one notification: the one-row case of the rows function below, which holds the
#: outbox insert and the wake-up for both.
NOTIFY_FUNCTION = "pgcelery_notify_v1"
NOTIFY_ROWS_FUNCTION = "pgcelery_notify_rows_v1"
CREATE_NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {NOTIFY_FUNCTION}(
    p_channel text, p_pg_channel text, p_trigger text, p_payload jsonb
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {NOTIFY_ROWS_FUNCTION}(p_channel, p_pg_channel, p_trigger, ARRAY[p_payload]);
END;
$$;
"""
DROP_NOTIFY_FUNCTION = f"DROP FUNCTION IF EXISTS {NOTIFY_FUNCTION}(text, text, text, jsonb);"

#: Records one notification per payload, in their order, and wakes the bridges LISTENing on
#: the channel. The wake-up payload is constant, so Postgres folds the wake-ups of one
#: transaction into one. Statement-level triggers pass all the rows they saw at once.
CREATE_NOTIFY_ROWS_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {NOTIFY_ROWS_FUNCTION}(
    p_channel text, p_pg_channel text, p_trigger text, p_payloads jsonb[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_payloads) > 0 THEN
        INSERT INTO {OUTBOX} (uuid, channel, trigger, payload, context, created_at)
        SELECT gen_random_uuid(), p_channel, p_trigger, rows.payload,
               NULLIF(current_setting('pgcelery.context', true), '')::jsonb, now()
        FROM unnest(p_payloads) WITH ORDINALITY AS rows (payload, position)
        ORDER BY rows.position;
        PERFORM pg_notify(p_pg_channel, '');
    END IF;
END;
$$;
"""
DROP_NOTIFY_ROWS_FUNCTION = (
    f"DROP FUNCTION IF EXISTS {NOTIFY_ROWS_FUNCTION}(text, text, text, jsonb[]);"
)

NOTIFY = f"SELECT {NOTIFY_FUNCTION}(%s, %s, '', %s::jsonb)"

#: Wakes the bridges listening on a channel, for rows put back in the queue.
WAKE = "SELECT pg_notify(%s, '')"

#: Transaction-local: the context ends with the transaction that set it.
SET_CONTEXT = "SELECT set_config('pgcelery.context', %s, true)"

_CLAIM = f"""
SELECT id, uuid, channel, trigger, payload::text, context::text
FROM {OUTBOX}
WHERE failed_at IS NULL{{where}}
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
CLAIM = _CLAIM.format(where="")
CLAIM_CHANNELS = _CLAIM.format(where=" AND channel = ANY(%(channels)s)")

DELETE = f"DELETE FROM {OUTBOX} WHERE id = ANY(%s)"

FAIL = f"""
UPDATE {OUTBOX} SET failed_at = now(), failure = data.reason
FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::text[]) AS reason) AS data
WHERE {OUTBOX}.id = data.id
"""

STATUS = f"""
SELECT channel,
       count(*) FILTER (WHERE failed_at IS NULL) AS pending,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE failed_at IS NULL)) AS oldest,
       count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed
FROM {OUTBOX}
GROUP BY channel
ORDER BY channel
"""

FAILURES = f"""
SELECT channel, id, failure FROM (
    SELECT channel, id, failure,
           row_number() OVER (PARTITION BY channel ORDER BY id) AS n
    FROM {OUTBOX} WHERE failed_at IS NOT NULL
) AS failed
WHERE n <= %s
ORDER BY channel, id
"""

#: Claims a task id for an ``atomic=True`` run; a concurrent claim of the same id waits
#: for the first transaction and inserts nothing if it committed.
RECORD_TASK = f"""
INSERT INTO {TASK_RECORDS} (task_id, created_at) VALUES (%s, now())
ON CONFLICT (task_id) DO NOTHING
"""

PRUNE_TASK_RECORDS = f"DELETE FROM {TASK_RECORDS} WHERE created_at < now() - %s"
