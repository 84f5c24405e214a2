"""Every SQL statement pgcelery runs, in one place.

Stored functions carry a version suffix: a function whose arguments or meaning change for
its callers (the triggers in apps' migrations) gets a new name in a new migration, so the
old and the new release of an app can run side by side in a deploy.
"""

OUTBOX = "pgcelery_notification"


def literal(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def listen(pg_channel: str) -> str:
    return f"LISTEN {identifier(pg_channel)}"


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
#: transaction into one. Statement-level triggers generated before migration 0002 pass all their
#: rows at once; newer ones record through the chunks function below.
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

#: Records the rows one statement wrote (a statement-level trigger's transition table), as
#: chunks of at most CHUNK rows, each a JSON array stored in one outbox row with the side
#: ('new' or 'old') its rows are: a bulk write costs one outbox insert per chunk, and no
#: per-row wrapping, instead of one of each per row. The bridge opens a chunk into one
#: notification per row.
NOTIFY_CHUNKS_FUNCTION = "pgcelery_notify_chunks_v1"
CHUNK = 100
CREATE_NOTIFY_CHUNKS_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {NOTIFY_CHUNKS_FUNCTION}(
    p_channel text, p_pg_channel text, p_trigger text, p_side text, p_chunks jsonb[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_chunks) > 0 THEN
        INSERT INTO {OUTBOX} (uuid, channel, trigger, payload, size, side, context, created_at)
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
DROP_NOTIFY_CHUNKS_FUNCTION = (
    f"DROP FUNCTION IF EXISTS {NOTIFY_CHUNKS_FUNCTION}(text, text, text, text, jsonb[]);"
)

#: One row of a chunk (outbox row ``o``) as a notification's payload, like a row trigger
#: records it.
_CHUNK_ROW = (
    "jsonb_build_object('old', CASE WHEN o.side = 'old' THEN {row} END, "
    "'new', CASE WHEN o.side = 'new' THEN {row} END)"
)

#: A row inserted without a size holds one notification, as every row did before chunks.
SET_SIZE_DEFAULT = f"ALTER TABLE {OUTBOX} ALTER COLUMN size SET DEFAULT 1"
DROP_SIZE_DEFAULT = f"ALTER TABLE {OUTBOX} ALTER COLUMN size DROP DEFAULT"

NOTIFY = f"SELECT {NOTIFY_FUNCTION}(%s, %s, '', %s::jsonb)"

#: Wakes the bridges listening on a channel, for rows put back in the queue.
WAKE = "SELECT pg_notify(%s, '')"

#: Transaction-local: the context ends with the transaction that set it.
SET_CONTEXT = "SELECT set_config('pgcelery.context', %s, true)"

#: Locks up to $1 pending rows (of the channels in $2, when not NULL), keeps those that start
#: before $1 notifications, and returns their notifications one per result row: (id, position
#: in the row, uuid, channel, trigger, payload, context). The other locked rows are free again
#: at commit. Prepared once per connection: the bridge runs it for every wake-up.
PREPARE_CLAIM = f"""
PREPARE pgcelery_claim (integer, text[]) AS
WITH locked AS (
    SELECT id, size FROM {OUTBOX}
    WHERE failed_at IS NULL AND ($2 IS NULL OR channel = ANY($2))
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), kept AS (
    SELECT id FROM (
        SELECT id, sum(size) OVER (ORDER BY id) - size AS before FROM locked
    ) AS counted
    WHERE before < $1
)
SELECT o.id, n.position, o.uuid::text, o.channel, o.trigger, n.payload::text, o.context::text
FROM {OUTBOX} AS o
JOIN kept USING (id)
CROSS JOIN LATERAL (
    SELECT o.payload, 0::bigint WHERE o.side IS NULL
    UNION ALL
    SELECT {_CHUNK_ROW.format(row="value")}, ordinality - 1
    FROM jsonb_array_elements(CASE WHEN o.side IS NOT NULL THEN o.payload END) WITH ORDINALITY
) AS n (payload, position)
ORDER BY o.id, n.position
"""
CLAIM = "EXECUTE pgcelery_claim (%s, %s)"

#: The bridge's commits only delete or mark rows: if the server crashed before flushing one,
#: its rows would be published again with the same task ids. Not waiting for the flush takes
#: a disk sync off every batch.
BRIDGE_SESSION = "SET synchronous_commit = off"

#: Deletes the claimed rows, but those FAIL has just marked.
DELETE = f"DELETE FROM {OUTBOX} WHERE id = ANY(%s) AND failed_at IS NULL"

#: Keeps the notifications the bridge cannot dispatch as failed rows: a row of one is marked
#: failed; a row of a chunk is copied to a failed notification of its own.
FAIL = f"""
WITH failed AS (
    SELECT * FROM unnest(%s::bigint[], %s::int[], %s::text[]) AS failed (id, position, reason)
), marked AS (
    UPDATE {OUTBOX} SET failed_at = now(), failure = failed.reason
    FROM failed
    WHERE {OUTBOX}.id = failed.id AND {OUTBOX}.side IS NULL
)
INSERT INTO {OUTBOX} (uuid, channel, trigger, payload, size, context, created_at, failed_at,
                      failure)
SELECT gen_random_uuid(), o.channel, o.trigger,
       {_CHUNK_ROW.format(row="o.payload -> failed.position")}, 1, o.context,
       o.created_at, now(), failed.reason
FROM {OUTBOX} AS o
JOIN failed USING (id)
WHERE o.side IS NOT NULL
ORDER BY failed.id, failed.position
"""

STATUS = f"""
SELECT channel,
       coalesce(sum(size) FILTER (WHERE failed_at IS NULL), 0) AS pending,
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
