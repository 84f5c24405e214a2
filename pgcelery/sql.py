"""Every SQL statement pgcelery runs at run time, in one place.

What migrations install (tables, stored functions) is frozen in the migrations themselves.
Stored functions carry a version suffix: a function whose arguments or meaning change for
its callers (the triggers in apps' migrations) gets a new name in a new migration, so the
old and the new release of an app can run side by side in a deploy.
"""

import re

OUTBOX = "pgcelery_notification"
TASK_RECORDS = "pgcelery_taskrecord"
DELIVERIES = "pgcelery_delivery"
#: Batches of listeners with ``batch`` as the claims that took their notifications formed
#: them (see ``models.FormedBatch``).
BATCHES = "pgcelery_batch"
#: Notifications of listeners with key options, waiting for their key (``models.Waiting``).
WAITING = "pgcelery_waiting"


def literal(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


#: A parameter's placeholder in a statement (``%s`` or ``%(name)s``, with the cast after it),
#: or an escaped ``%``.
_PLACEHOLDER = re.compile(r"%%|%(?:\((\w+)\))?s(::\w+(?:\[\])?)?")


def prepared(name: str, statement: str) -> tuple[str, str]:
    """``statement`` prepared as ``name``: the PREPARE, and the EXECUTE that takes the
    statement's parameters, each cast as the statement first casts it (a list of nulls, whose
    type the driver cannot tell, is then the list the statement expects)."""
    numbers: dict[str, int] = {}
    arguments: list[str] = []

    def parameter(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        named, cast = match.group(1), match.group(2) or ""
        key = f"#{len(arguments)}" if named is None else named
        if key not in numbers:
            numbers[key] = len(arguments) + 1
            arguments.append(("%s" if named is None else f"%({named})s") + cast)
        return f"${numbers[key]}{cast}"

    body = _PLACEHOLDER.sub(parameter, statement)
    listed = f" ({', '.join(arguments)})" if arguments else ""
    return f"PREPARE {identifier(name)} AS {body}", f"EXECUTE {identifier(name)}{listed}"


def listen(pg_channel: str) -> str:
    return f"LISTEN {identifier(pg_channel)}"


def unlisten(pg_channel: str) -> str:
    return f"UNLISTEN {identifier(pg_channel)}"


#: The stored functions the triggers in apps' migrations call, each created by the pgcelery
#: migration named here; their SQL lives, frozen, in that migration.
NOTIFY_FUNCTION = "pgcelery_notify_v1"
NOTIFY_CHUNKS_FUNCTION = "pgcelery_notify_chunks_v1"
#: The trigger functions a trigger executes itself: per row, and per statement (chunks).
ROW_FUNCTION = "pgcelery_row_v1"
ROWS_FUNCTION = "pgcelery_rows_v1"
FUNCTION_MIGRATIONS = {
    NOTIFY_FUNCTION: "0001_initial",
    "pgcelery_notify_rows_v1": "0001_initial",
    NOTIFY_CHUNKS_FUNCTION: "0002_notification_size",
    ROW_FUNCTION: "0006_batches_and_row_functions",
    ROWS_FUNCTION: "0006_batches_and_row_functions",
}
#: Rows of a bulk write per chunk (one outbox row); statement triggers group them so.
CHUNK = 100

#: One row of a chunk (outbox row ``o``) as a notification's payload, like a row trigger
#: records it.
_CHUNK_ROW = (
    "jsonb_build_object('old', CASE WHEN o.side = 'old' THEN {row} END, "
    "'new', CASE WHEN o.side = 'new' THEN {row} END)"
)

#: Records a notification: (channel, pg channel, trigger, payload); the trigger is empty
#: for ``notify()``.
NOTIFY = f"SELECT {NOTIFY_FUNCTION}(%s, %s, %s, %s::jsonb)"

#: Adds keys (a JSON object) to the transaction's notification context: the trace of the
#: span the writes are made in.
ADD_TO_CONTEXT = ("SELECT set_config('pgcelery.context', (coalesce(NULLIF(current_setting("
                  "'pgcelery.context', true), '')::jsonb, '{}'::jsonb) || %s::jsonb)::text, true)")

#: ``NOTIFY`` with the trace added to the context first, in one statement: outside
#: ``transaction.atomic()`` the statement is the transaction.
NOTIFY_TRACED = (f"WITH traced AS MATERIALIZED ({ADD_TO_CONTEXT}) "
                 f"SELECT {NOTIFY_FUNCTION}(%s, %s, %s, %s::jsonb) FROM traced")

#: What the task ids of outbox row ``o``'s notifications derive from: its uuid, or, where
#: the trigger spared the writer generating one, its id and the time it was recorded.
_SEED = ("coalesce(o.uuid, md5(o.id || ':' || "
         "to_char(o.created_at AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISSUS'))::uuid)")

#: The notifications of a stored batch (row ``{row}``, side 'batch': a failed delivery of a
#: batch listener, or a remembered one), in their order: (id, payload, position, seed,
#: context, n).
_BATCH_ITEMS = """
SELECT (item ->> 'id')::bigint AS id, item -> 'payload' AS payload,
       (item ->> 'position')::bigint AS position, (item ->> 'uuid')::uuid AS seed,
       NULLIF(item -> 'context', 'null'::jsonb) AS context, n
FROM jsonb_array_elements(CASE WHEN {row}.side = 'batch' AND {readable} THEN {row}.payload END)
    WITH ORDINALITY AS items (item, n)
"""

#: Whether outbox row ``{row}`` is a chunk of a bulk write's rows that the claim can read.
_CHUNK = ("({row}.side IN ('new', 'old') AND CASE WHEN jsonb_typeof({row}.payload) = 'array' "
          "THEN jsonb_array_length({row}.payload) > 0 ELSE false END)")

#: Whether outbox row ``o`` holds notifications the claim can read: a payload of one, a
#: chunk's non-empty array of rows, or a stored batch whose items each have an id, a
#: position and a uuid. pgcelery writes nothing else; a role calling its writer functions
#: with arguments of its own can, and such a row is claimed as one notification with no
#: payload, for the bridge to fail. (Braces doubled: the claim is formatted once more.)
_READABLE = "(o.side IS NULL OR " + _CHUNK.format(row="o") + """
 OR (o.side = 'batch' AND CASE WHEN jsonb_typeof(o.payload) = 'array'
                                THEN jsonb_array_length(o.payload) > 0 ELSE false END
     AND NOT EXISTS (
         SELECT FROM jsonb_array_elements(o.payload) AS items (item)
         WHERE jsonb_typeof(item) <> 'object'
            OR coalesce(item ->> 'id' !~ '^[0-9]{{1,18}}$', true)
            OR coalesce(item ->> 'position' !~ '^[0-9]{{1,18}}$', true)
            OR coalesce(item ->> 'uuid' !~* ('^[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-'
                                             '[0-9a-f]{{4}}-[0-9a-f]{{12}}$'), true))))
"""

#: What the bridge's role lacks of the privileges it needs: (object, privilege) for each,
#: the privilege NULL for a table that does not exist (not migrated).
MISSING_PRIVILEGES = f"""
SELECT needed.name, CASE WHEN to_regclass(needed.name) IS NOT NULL THEN needed.privilege END
FROM (VALUES ('{OUTBOX}', 'SELECT'), ('{OUTBOX}', 'INSERT'), ('{OUTBOX}', 'UPDATE'),
             ('{OUTBOX}', 'DELETE'), ('{OUTBOX}_id_seq', 'USAGE'),
             ('{DELIVERIES}', 'SELECT'), ('{DELIVERIES}', 'INSERT'), ('{DELIVERIES}', 'UPDATE'),
             ('{DELIVERIES}', 'DELETE'), ('{TASK_RECORDS}', 'SELECT'), ('{TASK_RECORDS}', 'DELETE'),
             ('{BATCHES}', 'SELECT'), ('{BATCHES}', 'INSERT'), ('{BATCHES}', 'DELETE'),
             ('{WAITING}', 'SELECT'), ('{WAITING}', 'INSERT'), ('{WAITING}', 'DELETE'),
             ('{WAITING}_id_seq', 'USAGE'))
    AS needed (name, privilege)
WHERE CASE WHEN to_regclass(needed.name) IS NULL THEN true
           WHEN needed.privilege = 'USAGE'
               THEN NOT has_sequence_privilege(to_regclass(needed.name), 'USAGE')
           ELSE NOT has_table_privilege(to_regclass(needed.name), needed.privilege) END
"""

#: pgcelery's functions that earlier releases' migrations created in pg_catalog, which
#: ``pg_dump`` leaves out (migration 0008 moves them). Run without parameters.
FUNCTIONS_IN_PG_CATALOG = r"""
SELECT p.oid::regprocedure::text FROM pg_proc AS p
WHERE p.proname LIKE 'pgcelery\_%' AND p.pronamespace = 'pg_catalog'::regnamespace
ORDER BY 1
"""

#: Finds out whether a connection is still there.
PING = "SELECT 1"

#: Wakes the bridges listening on a channel, for rows put back in the queue.
WAKE = "SELECT pg_notify(%s, '')"

#: Transaction-local: the context ends with the transaction that set it.
SET_CONTEXT = "SELECT set_config('pgcelery.context', %s, true)"

#: The notifications of the rows in CTE ``kept``, of those in ``locked``, one per result
#: row (see ``_CLAIM``). Braces doubled: the statements are formatted once more.
_NOTIFICATIONS = f"""
SELECT o.id, n.position, n.seed::text, o.channel, o.trigger, n.payload::text, n.context::text,
       o.listener, o.task_id, extract(epoch FROM statement_timestamp() - o.created_at)::float8,
       o.side IN ('new', 'old') AND n.n > 1,
       (SELECT count(*) FROM kept) < (SELECT count(*) FROM locked)
FROM {OUTBOX} AS o
JOIN kept USING (id)
CROSS JOIN unsynced
CROSS JOIN LATERAL (SELECT {_READABLE}) AS r (readable)
CROSS JOIN LATERAL (
    SELECT o.payload, 0::bigint, {_SEED}, o.context, 0::bigint WHERE o.side IS NULL
    UNION ALL
    SELECT {_CHUNK_ROW.format(row="value")}, ordinality - 1, {_SEED},
           CASE WHEN ordinality = 1 THEN o.context END, ordinality
    FROM jsonb_array_elements(CASE WHEN o.side IN ('new', 'old') AND r.readable
                                   THEN o.payload END)
        WITH ORDINALITY
    UNION ALL
    SELECT payload, position, seed, context, n
    FROM ({_BATCH_ITEMS.format(row="o", readable="r.readable")}) AS items
    UNION ALL
    SELECT NULL::jsonb, 0::bigint, {_SEED}, o.context, 0::bigint WHERE NOT r.readable
) AS n (payload, position, seed, context, n)
ORDER BY o.id, n.n
"""

#: What outbox row ``{row}`` holds in the bridge's memory once claimed: its payload and its
#: context as decoded text, the context once per notification it goes out with. Their stored
#: size tells little: a 10 MiB string of one letter is stored in a few kilobytes.
_DECODED_BYTES = ("(SELECT octet_length(x.payload::text) "
                  "+ coalesce(octet_length(x.context::text), 0) * x.size "
                  "FROM {outbox} AS x WHERE x.id = {row})")

#: Locks up to {limit} pending rows (of the channels in {channels}, when not NULL) whose
#: channel and trigger ('channel|trigger') are in {known}, or that are older than {grace}
#: (rows no bridge knows, to be failed). Keeps those that start before {limit}
#: notifications and end within {budget} decoded bytes (the first row always), and
#: returns their notifications one per result row: (id, position in the row, uuid, channel,
#: trigger, payload, context, for a failed delivery put back in the queue its listener and
#: task id, its age in seconds, whether its context is the previous notification's, and
#: whether rows were left out for the limits). The other locked rows are free again at
#: commit.
#: The rows' sizes are walked in id order and the walk stops past the budget, so a claim
#: decodes at most one row it does not keep. The context of a chunk's notifications is
#: returned with the first of them only, as they share it.
#: The transaction's commit does not wait for the disk: it only deletes or marks rows, and
#: if the server crashed before flushing it, its rows would be published again with the
#: same task ids. Set for the transaction only, so nothing outlives it on a pooled session.
_CLAIM = f"""
WITH RECURSIVE unsynced AS MATERIALIZED (
    SELECT set_config('synchronous_commit', 'off', true)
), locked AS (
    SELECT id, size FROM {OUTBOX}
    WHERE failed_at IS NULL AND ({{channels}}::text[] IS NULL OR channel = ANY({{channels}}))
      AND (channel || '|' || trigger = ANY({{known}}::text[])
           OR created_at < now() - {{grace}}::interval)
      AND ({{where}})
    ORDER BY id
    LIMIT {{limit}}
    FOR UPDATE SKIP LOCKED
), listed AS (
    SELECT array_agg(id ORDER BY id) AS ids, array_agg(size ORDER BY id) AS sizes,
           count(*) AS total
    FROM locked
), walked (n, id, size, before, bytes) AS (
    SELECT 1, ids[1], sizes[1], 0::bigint, {_DECODED_BYTES.format(outbox=OUTBOX, row="ids[1]")}
    FROM listed WHERE total > 0
    UNION ALL
    SELECT w.n + 1, l.ids[w.n + 1], l.sizes[w.n + 1], w.before + w.size,
           w.bytes + {_DECODED_BYTES.format(outbox=OUTBOX, row="l.ids[w.n + 1]")}
    FROM walked AS w, listed AS l
    WHERE w.n < l.total AND w.bytes <= {{budget}} AND w.before + w.size < {{limit}}
), kept AS (
    SELECT id FROM walked WHERE n = 1 OR (before < {{limit}} AND bytes <= {{budget}})
)
{_NOTIFICATIONS}"""

#: Locks the pending rows of ids %(ids)s that no other claim holds (the rows of batches an
#: earlier claim formed that this claim's limits left out), and returns their notifications
#: as the claim does.
CLAIM_ROWS = f"""
WITH unsynced AS MATERIALIZED (
    SELECT set_config('synchronous_commit', 'off', true)
), locked AS (
    SELECT id FROM {OUTBOX} WHERE id = ANY(%(ids)s::bigint[]) AND failed_at IS NULL
    ORDER BY id
    FOR UPDATE SKIP LOCKED
), kept AS (
    SELECT id FROM locked
)
{_NOTIFICATIONS}""".format()
def claim(where: str) -> str:
    """The claim of rows that also meet ``where`` (SQL, values written in)."""
    return _CLAIM.format(limit="%(limit)s", channels="%(channels)s", known="%(known)s",
                         grace="%(grace)s", budget="%(budget)s",
                         where=where.replace("%", "%%"))

#: The batches of listeners in %s (task names) formed of notifications of the rows %s:
#: (task id, listener, row ids, positions).
FORMED_BATCHES = f"""
SELECT task_id, listener, ids, positions FROM {BATCHES}
WHERE listener = ANY(%s::text[]) AND ids && %s::bigint[]
"""

#: Keeps batches about to be published, a JSON array of [task id, listener, row ids,
#: positions]; committed, on a connection of its own, before their messages leave.
FORM_BATCHES = f"""
INSERT INTO {BATCHES} (task_id, listener, ids, positions, created_at)
SELECT batch ->> 0, batch ->> 1,
       ARRAY(SELECT value::bigint FROM jsonb_array_elements_text(batch -> 2)
             WITH ORDINALITY ORDER BY ordinality),
       ARRAY(SELECT value::int FROM jsonb_array_elements_text(batch -> 3)
             WITH ORDINALITY ORDER BY ordinality),
       now()
FROM jsonb_array_elements(%s::jsonb) AS batches (batch)
ON CONFLICT (task_id) DO NOTHING
"""

#: Forgets the batches of a claim, in the transaction that deletes their rows.
FORGET_BATCHES = f"DELETE FROM {BATCHES} WHERE task_id = ANY(%s)"

#: Forgets batches formed longer ago than the retention (their rows pending all that time).
PRUNE_BATCHES = f"DELETE FROM {BATCHES} WHERE created_at < now() - %s"

#: Deletes the claimed rows, but those FAIL has just marked.
DELETE = f"DELETE FROM {OUTBOX} WHERE id = ANY(%s) AND failed_at IS NULL"

#: Keeps the notifications the bridge cannot dispatch as failed rows: a row of one, of a
#: failed batch put back in the queue, or one that holds no readable chunk, is marked
#: failed as it is; a row of a chunk is copied to a failed notification of its own.
FAIL = f"""
WITH failed AS (
    SELECT * FROM unnest(%s::bigint[], %s::int[], %s::text[]) AS failed (id, position, reason)
), marked AS (
    UPDATE {OUTBOX} SET failed_at = now(), failure = failed.reason
    FROM failed
    WHERE {OUTBOX}.id = failed.id AND NOT {_CHUNK.format(row=OUTBOX)}
)
INSERT INTO {OUTBOX} (uuid, channel, trigger, payload, size, context, created_at, failed_at,
                      failure)
SELECT gen_random_uuid(), o.channel, o.trigger,
       {_CHUNK_ROW.format(row="o.payload -> failed.position")}, 1, o.context,
       o.created_at, now(), failed.reason
FROM {OUTBOX} AS o
JOIN failed USING (id)
WHERE {_CHUNK.format(row="o")}
ORDER BY failed.id, failed.position
"""

#: (table, trigger) of every trigger the database has, for the bridge to tell at start which
#: listener triggers are missing.
INSTALLED_TRIGGERS = """
SELECT c.relname::text, t.tgname::text
FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal
"""

#: One row per channel with rows in the outbox: pending notifications, the oldest one's age
#: in seconds, failed rows. The bridge's metrics read it every few seconds.
BACKLOG = f"""
SELECT channel,
       coalesce(sum(size) FILTER (WHERE failed_at IS NULL), 0) AS pending,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE failed_at IS NULL))::float8
           AS oldest,
       count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed
FROM {OUTBOX}
GROUP BY channel
"""

#: ``BACKLOG``, and the first $1 failures of each channel as a JSON array of
#: {"id", "reason", "listener", "task_id"}. One statement, so one snapshot: a failure
#: committed meanwhile is in the counts and the list, or in neither.
STATUS = f"""
WITH failures AS (
    SELECT channel, id, failure, listener, task_id,
           row_number() OVER (PARTITION BY channel ORDER BY id) AS n
    FROM {OUTBOX} WHERE failed_at IS NOT NULL
)
SELECT counts.channel, counts.pending, counts.oldest, counts.failed,
       coalesce(listed.failures, '[]')::text
FROM ({BACKLOG}) AS counts
LEFT JOIN LATERAL (
    SELECT json_agg(json_build_object('id', id, 'reason', failure, 'listener', listener,
                                      'task_id', task_id) ORDER BY id) AS failures
    FROM failures
    WHERE failures.channel = counts.channel AND failures.n <= %s
) AS listed ON true
ORDER BY counts.channel
"""

#: Records a listener's task that failed for good as a failed delivery, once per task id:
#: (channel, trigger, payload, context, reason, listener, task id, attempts, size, side).
RECORD_FAILED_DELIVERY = (
    "SELECT pgcelery_fail_delivery_v2(%s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s, %s)"
)

#: Claims a task id for an ``atomic=True`` run, true if it is the first; a concurrent claim
#: of the same id waits for the first transaction and is false if it committed.
RECORD_TASK = "SELECT pgcelery_record_task_v1(%s)"

#: The same for each notification of an ``atomic=True`` batch: returns the task ids that
#: were not recorded yet (the notifications to run).
RECORD_TASKS = "SELECT pgcelery_record_tasks_v1(%s::text[])"

PRUNE_TASK_RECORDS = f"DELETE FROM {TASK_RECORDS} WHERE created_at < now() - %s"


# -- deliveries of ``redeliver_after`` listeners ----------------------------------------------

#: The key of the notification whose payload is {payload} (jsonb), for a listener whose key
#: is at {name} (NULL: no key), in the row's ``new`` (``old`` where it is null) if {of_rows}.
#: Read by the database, so that a key compares as the same JSON wherever it is read.
_KEY = ("CASE WHEN {name} IS NULL THEN NULL WHEN {of_rows} "
        "THEN coalesce(nullif({payload} -> 'new', 'null'::jsonb) -> {name}, "
        "{payload} -> 'old' -> {name}) ELSE {payload} -> {name} END")

#: The payload of the first notification a stored delivery holds: its {payload} (jsonb),
#: the list of its notifications if its {side} is 'batch'.
_FIRST_PAYLOAD = ("CASE WHEN {side} = 'batch' THEN {payload} -> 0 -> 'payload' "
                  "ELSE {payload} END")

#: Remembers published deliveries, (task id, listener, notification id, channel, trigger,
#: payload, context, side, seconds, where the listener's key is, whether in a row) each,
#: before their messages leave: a worker that finishes one before the bridge commits waits
#: on the row (see FINISH_DELIVERY). A delivery published again (a failed one retried, a
#: crash's redelivery) starts afresh.
REMEMBER_DELIVERIES = f"""
INSERT INTO {DELIVERIES} (task_id, listener, notification, channel, trigger, payload, context,
                         side, key, period, publishes, redeliver_at, finished_at)
SELECT r.task_id, r.listener, r.notification, r.channel, r.trigger, j.payload,
       r.context::jsonb, r.side,
       {_KEY.format(name="r.name", of_rows="r.of_rows",
                    payload=_FIRST_PAYLOAD.format(side="r.side", payload="j.payload"))},
       make_interval(secs => r.seconds), 1, now() + make_interval(secs => r.seconds), NULL
FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[],
            %s::text[], %s::text[], %s::float8[], %s::text[], %s::bool[])
    AS r (task_id, listener, notification, channel, trigger, payload, context, side,
          seconds, name, of_rows)
CROSS JOIN LATERAL (SELECT r.payload::jsonb) AS j (payload)
ON CONFLICT (task_id) DO UPDATE SET
    listener = excluded.listener, notification = excluded.notification,
    channel = excluded.channel, trigger = excluded.trigger, payload = excluded.payload,
    context = excluded.context, side = excluded.side, key = excluded.key,
    period = excluded.period, publishes = 1, redeliver_at = excluded.redeliver_at,
    finished_at = NULL
"""

#: Forgets deliveries whose messages were not sent after all.
FORGET_DELIVERIES = f"DELETE FROM {DELIVERIES} WHERE task_id = ANY(%s)"

#: Locks up to $3 unfinished deliveries (of the channels in $1, when not NULL) that are
#: due, and returns their notifications, one per result row: (task id, listener,
#: notification id, channel, trigger, payload, context, position, seed: NULL but in a batch).
DUE_DELIVERIES = f"""
SELECT d.task_id, d.listener, n.id, d.channel, d.trigger, n.payload::text, n.context::text,
       n.position, n.seed::text
FROM (
    SELECT * FROM {DELIVERIES}
    WHERE finished_at IS NULL AND redeliver_at <= now()
      AND (%s::text[] IS NULL OR channel = ANY(%s))
    ORDER BY redeliver_at
    LIMIT %s
    FOR UPDATE SKIP LOCKED
) AS d
CROSS JOIN LATERAL (
    SELECT d.notification, d.payload, 0::bigint, NULL::uuid, d.context, 0::bigint
    WHERE d.side IS NULL
    UNION ALL
    {_BATCH_ITEMS.format(row="d", readable="true")}
) AS n (id, payload, position, seed, context, n)
ORDER BY d.redeliver_at, d.task_id, n.n
"""

#: Counts a new publish of deliveries, due again one period from now.
REDELIVERED = f"""
UPDATE {DELIVERIES} SET publishes = publishes + 1, redeliver_at = now() + period
WHERE task_id = ANY(%s)
"""

#: Seconds until the next unfinished delivery is due (NULL when there is none).
NEXT_REDELIVERY = f"""
SELECT extract(epoch FROM min(redeliver_at) - now()) FROM {DELIVERIES}
WHERE finished_at IS NULL AND (%s::text[] IS NULL OR channel = ANY(%s))
"""

#: Whether a delivery already finished: a copy of its message that arrives later is skipped.
#: A finished delivery published again (a failed one retried) is being reset by a bridge
#: that may not have committed yet: the function's lock waits for it, and sees the reset row.
DELIVERY_FINISHED = "SELECT pgcelery_delivery_finished_v1(%s)"

#: Marks a delivery finished. The function inserts, rather than updates, so it waits on a
#: bridge that has remembered the delivery but not yet committed instead of missing its row.
#: Its commit does not wait for the disk (set here: a function's own settings end with it):
#: a mark lost in a server crash only means one more redelivery, which ``atomic=True``
#: makes a no-op.
FINISH_DELIVERY = """
SELECT pgcelery_finish_delivery_v1(%s)
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS unsynced
"""

#: ``FINISH_DELIVERY`` of a listener with key options, waking the bridges (pg channel %s,
#: payload %s: ``keys.FREED``) at its commit: the key it held is free.
FINISH_KEYED_DELIVERY = """
SELECT pgcelery_finish_delivery_v1(%s), pg_notify(%s, %s)
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS unsynced
"""

#: Puts off the redelivery of a task Celery retries (task id, in seconds), by that much.
POSTPONE_DELIVERY = "SELECT pgcelery_postpone_delivery_v1(%s, %s)"

#: Finished deliveries are kept this long, for copies of their messages still in a queue.
PRUNE_DELIVERIES = f"DELETE FROM {DELIVERIES} WHERE finished_at < now() - %s"


# -- listeners with key options -----------------------------------------------------------------

#: Moves claimed notifications of keyed listeners to the waiting table, in the claim's
#: transaction: (listener, where its key is, whether in a row, outbox row id, position,
#: seed, payload, context) each; the time each was recorded is its outbox row's.
PARK = f"""
INSERT INTO {WAITING} (listener, key, notification, position, seed, channel, trigger, payload,
                       context, created_at)
SELECT p.listener, {_KEY.format(name="p.name", of_rows="p.of_rows", payload="p.payload::jsonb")},
       p.notification, p.position, p.seed::uuid, o.channel, o.trigger, p.payload::jsonb,
       p.context::jsonb, o.created_at
FROM unnest(%s::text[], %s::text[], %s::bool[], %s::bigint[], %s::int[], %s::text[],
            %s::text[], %s::text[])
    AS p (listener, name, of_rows, notification, position, seed, payload, context)
JOIN {OUTBOX} AS o ON o.id = p.notification
ORDER BY p.notification, p.position
"""

#: Makes the bridges' releases take turns: two that both saw a key free would publish two of
#: its notifications at once. Taken until the release's transaction ends, if no other release
#: holds it (then false): a bridge tries again shortly rather than wait, as a peer hung in the
#: middle of a release would hold it until its session ends.
#: The release's commit does not wait for the disk (0.08 ms, not 0.38, here): one lost in a
#: server crash puts its notifications back to wait, to be published again under the same
#: task ids, as a crash between the publish and the commit would.
TAKE_RELEASE_TURN = """
SELECT pg_try_advisory_xact_lock(hashtext('pgcelery_release')),
       set_config('synchronous_commit', 'off', true)
"""

#: The listeners a release serves, with how many notifications of a key it looks at and
#: their limit (NULL: none), from $1, $2, $3; and the first pending row of the channels in $4:
#: a row another bridge has claimed, and not yet moved here, may come before those waiting,
#: so a release takes only those older than it.
_SERVED = f"""served AS (
    SELECT * FROM unnest(%s::text[], %s::int[], %s::int[]) AS s (listener, first, most)
), horizon AS (
    SELECT coalesce(min(id), 9223372036854775807) AS id FROM {OUTBOX}
    WHERE failed_at IS NULL AND listener IS NULL AND channel = ANY(%s::text[])
)"""

#: What a release reads of each waiting notification ``r`` (with the deliveries of its key
#: in flight): (entry id, listener, key as JSON text, outbox row id, position, seed, channel,
#: trigger, payload, context, seconds since recorded, deliveries in flight).
_WAITING_COLUMNS = """SELECT r.id, r.listener, r.key::text, r.notification, r.position,
       r.seed::text, r.channel, r.trigger, r.payload::text, r.context::text,
       extract(epoch FROM statement_timestamp() - r.created_at)::float8, r.in_flight"""

#: The first notifications waiting for each key of the served listeners (``_SERVED``), up to
#: their number for each, in commit order per key. Keys whose deliveries in flight reach the
#: listener's limit are left out, so that a release sorts only what it may publish. Keys are
#: joined by equalities (a listener without ``key=`` has the SQL null as its one key), which
#: PostgreSQL can hash: ``IS NOT DISTINCT FROM`` it cannot, and compared every waiting
#: notification with every busy key (69 ms for 4,000 waiting over 100 keys; 2.4 ms so).
WAITING_FIRST = f"""
WITH {_SERVED}, busy AS (
    SELECT d.listener, d.key IS NULL AS keyless, coalesce(d.key, 'null') AS key, count(*) AS n
    FROM {DELIVERIES} AS d JOIN served USING (listener)
    WHERE d.finished_at IS NULL
    GROUP BY 1, 2, 3
), ranked AS (
    SELECT w.*, coalesce(b.n, 0) AS in_flight,
           row_number() OVER (PARTITION BY w.listener, w.key
                              ORDER BY w.notification, w.position) AS n
    FROM {WAITING} AS w
    JOIN served AS s USING (listener)
    LEFT JOIN busy AS b ON b.listener = w.listener AND b.keyless = (w.key IS NULL)
                       AND b.key = coalesce(w.key, 'null')
    WHERE w.notification < (SELECT id FROM horizon)
      AND (s.most IS NULL OR coalesce(b.n, 0) < s.most)
)
{_WAITING_COLUMNS}
FROM ranked AS r JOIN served AS s USING (listener)
WHERE r.n <= s.first
ORDER BY r.listener, r.key, r.n
"""

#: The first notifications waiting for {key}, of listener {listener}, older than the horizon,
#: in commit order, up to {first}; with {in_flight}. Each {key} is looked up by the index on
#: (listener, key, notification, position), in its order: the SQL null (a listener without
#: ``key=``) in a branch of its own, as ``IS NOT DISTINCT FROM`` cannot use it.
_FIRST_OF_KEY = """(SELECT w.*, {in_flight} AS in_flight FROM {waiting} AS w
 WHERE w.listener = {listener} AND w.key = {key} AND w.notification < (SELECT id FROM horizon)
 ORDER BY w.listener, w.key, w.notification, w.position LIMIT {first})
UNION ALL
(SELECT w.*, {in_flight} FROM {waiting} AS w
 WHERE {key} IS NULL AND w.listener = {listener} AND w.key IS NULL
   AND w.notification < (SELECT id FROM horizon)
 ORDER BY w.listener, w.key, w.notification, w.position LIMIT {first})"""

#: The deliveries of {listener} in flight for {key} (the SQL null: of a listener without
#: ``key=``), by the index on (listener, key) of unfinished deliveries.
_IN_FLIGHT = f"""(SELECT count(*) FROM {DELIVERIES} AS d
 WHERE d.finished_at IS NULL AND d.listener = {{listener}} AND d.key = {{key}})
+ (SELECT count(*) FROM {DELIVERIES} AS d
   WHERE {{key}} IS NULL AND d.finished_at IS NULL AND d.listener = {{listener}}
     AND d.key IS NULL)"""

#: ``WAITING_FIRST`` for the keys of the deliveries in $5 only (task ids: those a worker just
#: finished, which freed their keys), each read through the indexes: what a worker's wake-up
#: costs does not grow with the notifications waiting (0.4–0.6 ms with 100,000 waiting over
#: 100 keys, where ``WAITING_FIRST`` reads them all in 60–90 ms).
WAITING_FREED = f"""
WITH {_SERVED}, freed AS (
    SELECT DISTINCT d.listener, d.key, s.first, s.most
    FROM {DELIVERIES} AS d JOIN served AS s USING (listener)
    WHERE d.task_id = ANY(%s::text[])
), counted AS MATERIALIZED (
    SELECT f.*, {_IN_FLIGHT.format(listener="f.listener", key="f.key")} AS in_flight
    FROM freed AS f
)
{_WAITING_COLUMNS}
FROM counted AS c
CROSS JOIN LATERAL ({_FIRST_OF_KEY.format(waiting=WAITING, listener="c.listener", key="c.key",
                                          first="c.first", in_flight="c.in_flight")}) AS r
WHERE c.most IS NULL OR c.in_flight < c.most
ORDER BY r.listener, r.key, r.notification, r.position
"""

#: The keys held by a failed delivery of an ``ordered="block"`` listener, or by one retried
#: and not yet published: (listener, key as JSON text), for listeners (%s) whose key is at
#: %s, in a row if %s.
BLOCKED = f"""
SELECT DISTINCT o.listener,
       ({_KEY.format(name="b.name", of_rows="b.of_rows",
                     payload=_FIRST_PAYLOAD.format(side="o.side", payload="o.payload"))})::text
FROM unnest(%s::text[], %s::text[], %s::bool[]) AS b (listener, name, of_rows)
JOIN {OUTBOX} AS o ON o.listener = b.listener
"""

#: Keeps released deliveries the broker refused as failed deliveries of their listener:
#: (channel, trigger, payload, context, side, notifications, reason, listener, task id) each.
FAIL_DELIVERIES = f"""
INSERT INTO {OUTBOX} (channel, trigger, payload, context, side, size, failure, listener,
                      task_id, created_at, failed_at)
SELECT f.channel, f.trigger, f.payload::jsonb, f.context::jsonb, f.side, f.size, f.reason,
       f.listener, f.task_id, now(), now()
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[],
            %s::text[], %s::text[])
    AS f (channel, trigger, payload, context, side, size, reason, listener, task_id)
ON CONFLICT (task_id) WHERE task_id IS NOT NULL AND failed_at IS NOT NULL DO NOTHING
"""

#: Deletes released (or merged) waiting notifications, in the release's transaction.
UNPARK = f"DELETE FROM {WAITING} WHERE id = ANY(%s)"

#: How many notifications wait, per channel and listener.
WAITING_COUNTS = f"SELECT channel, listener, count(*) FROM {WAITING} GROUP BY channel, listener"


#: The statements of a bridge's every claim and release, prepared once per session where the
#: session is its own (see ``Connector.connect``), as its claim is: parsing and planning them
#: took longer than running them.
PREPARED = (DELETE, PARK, REMEMBER_DELIVERIES, TAKE_RELEASE_TURN, WAITING_FIRST,
            WAITING_FREED, UNPARK)
