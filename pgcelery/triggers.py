"""Row triggers that record a notification for every insert, update or delete.

Each (channel, when, operation, condition) gets one pgtrigger trigger on the channel's
model, so it lands in the migrations of the app that owns the model. The trigger
writes the old and new rows to the outbox through a versioned stored function: one
notification per row event, or, for a statement-level trigger, chunks of its rows.

The trigger executes pgcelery's trigger function itself, with the channel, trigger and
left-out columns as its arguments: one plpgsql call per row (or statement), no more. A
model with multi-table parents needs their columns looked up, so its trigger runs a
function of its own, which pgtrigger writes, calling pgcelery's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pgtrigger
from pgtrigger import compiler

from pgcelery import channels, sql, trigger_migrations

_OPERATION_CODES = {"INSERT": "i", "UPDATE": "u", "DELETE": "d", "TRUNCATE": "t"}


def _row_json(channel: type[channels.TriggerChannel], ref: str) -> str:
    """SQL for the jsonb of row ``ref`` (OLD or NEW), with its multi-table ancestors' columns,
    less the columns the channel leaves out: with ``include_fields``, every column but the
    named fields' and the primary key's, also those the table has outside the model."""
    model = channel.model
    own_pk = f"{ref}.{sql.identifier(model._meta.pk.column)}"
    parts = [
        f"COALESCE((SELECT to_jsonb(a) FROM {sql.identifier(parent._meta.db_table)} AS a "
        f"WHERE a.{sql.identifier(parent._meta.pk.column)} = {own_pk}), '{{}}'::jsonb)"
        for parent in reversed(model._meta.get_parent_list())
    ]
    row = " || ".join([*parts, f"to_jsonb({ref})"])
    hidden = channels.hidden_fields(channel)
    if channel.include_fields is not None:
        kept = [sql.literal(field.column) for field in model._meta.concrete_fields
                if field.column and field not in hidden]
        return (f"(SELECT jsonb_object_agg(kept.key, kept.value) FROM jsonb_each({row}) "
                f"AS kept WHERE kept.key = ANY(ARRAY[{', '.join(kept)}]))")
    left_out = [sql.literal(field.column) for field in hidden if field.column]
    return f"({row}) - ARRAY[{', '.join(left_out)}]" if left_out else row


class _DirectTrigger(pgtrigger.Trigger):
    """A pgtrigger trigger that executes pgcelery's trigger function ``execute`` (a call
    with literal arguments) instead of a function of its own.

    pgtrigger still creates a function of the trigger's name; nothing calls it.
    """

    def __init__(self, *, execute: str, **kwargs: Any) -> None:
        super().__init__(func="RETURN NULL;", **kwargs)
        self.execute = execute

    def render_execute(self, model: Any) -> str:
        return self.execute


def _execute(function: str, channel: type[channels.TriggerChannel], trigger: str) -> str:
    name = channels.channel_name(channel)
    columns = [field.column for field in channels.hidden_fields(channel) if field.column]
    hidden = "{" + ",".join('"' + column.replace("\\", "\\\\").replace('"', '\\"') + '"'
                            for column in columns) + "}"
    arguments = (name, channels.pg_channel(name), trigger, hidden)
    return f"{function}({', '.join(map(sql.literal, arguments))})"


def _call(function: str, channel: str, trigger: str, *arguments: str) -> str:
    return (
        f"PERFORM {function}({sql.literal(channel)}, {sql.literal(channels.pg_channel(channel))}, "
        f"{sql.literal(trigger)}, {', '.join(arguments)});\n"
    )


def _row_func(channel: type[channels.TriggerChannel], trigger: str) -> str:
    payload = (
        f"jsonb_build_object('old', {_row_json(channel, 'OLD')}, "
        f"'new', {_row_json(channel, 'NEW')})"
    )
    # Returning the row unchanged: a BEFORE trigger never alters or cancels the write.
    return (
        _call(sql.NOTIFY_FUNCTION, channels.channel_name(channel), trigger, payload)
        + "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;\nRETURN NEW;"
    )


def _statement_func(channel: type[channels.TriggerChannel], trigger: str, side: str) -> str:
    chunks = (
        f"ARRAY(SELECT jsonb_agg(rows.row ORDER BY rows.position) FROM ("
        f"SELECT {_row_json(channel, 'r')} AS row, row_number() OVER () AS position "
        f"FROM {side}_rows AS r) AS rows "
        f"GROUP BY (rows.position - 1) / {sql.CHUNK} ORDER BY min(rows.position))"
    )
    return (
        _call(sql.NOTIFY_CHUNKS_FUNCTION, channels.channel_name(channel), trigger,
              sql.literal(side), chunks)
        + "RETURN NULL;"
    )


def _transition_side(when: pgtrigger.When, operation: pgtrigger.Operation,
                     condition: pgtrigger.Condition | None) -> str | None:
    """``"new"`` or ``"old"`` where one statement-level trigger can serve all the rows.

    One call per statement, and one outbox row per chunk of rows, make bulk writes several
    times cheaper. Postgres gives transition tables only to AFTER triggers of one event with
    no WHEN condition; UPDATE stays row-level, as its old and new rows pair only by a
    primary key that the update may change.
    """
    if str(when) != "AFTER" or condition is not None:
        return None
    return {"INSERT": "new", "DELETE": "old"}.get(str(operation))


def _name(channel: str, when: pgtrigger.When, operation: pgtrigger.Operation,
          condition_sql: str) -> str:
    ops = "".join(code for op, code in _OPERATION_CODES.items() if op in str(operation))
    digest = hashlib.sha1(f"{channel}|{when}|{operation}|{condition_sql}".encode()).hexdigest()
    return f"pgcelery_{str(when).lower()}_{ops}_{digest[:10]}"


class ListenerTrigger(pgtrigger.Trigger):
    """A listener's trigger, with every rendering of it that pgcelery has written.

    It compiles to the newest rendering, unless the app's migrations already hold an
    earlier release's rendering of the same declaration: then to that one, so that an
    upgrade of pgcelery leaves the users' migrations (and ``makemigrations --check``) as
    they are. A changed declaration matches no earlier rendering and gets the newest.
    """

    def __init__(self, renderings: list[pgtrigger.Trigger]) -> None:
        newest = renderings[0]
        super().__init__(name=newest.name, level=newest.level, when=newest.when,
                         operation=newest.operation, condition=newest.condition,
                         referencing=newest.referencing, func="RETURN NULL;")
        self.renderings = renderings

    def compile(self, model: Any) -> compiler.Trigger:
        return trigger_migrations.adopted(model, self.renderings)


def _renderings(channel: type[channels.TriggerChannel], name: str, when: pgtrigger.When,
                operation: pgtrigger.Operation,
                condition: pgtrigger.Condition | None) -> list[pgtrigger.Trigger]:
    """The trigger as pgcelery renders it now, then as earlier releases rendered it.

    Frozen: a change to the SQL is a new rendering put first, never an edit of one here.
    """
    side = _transition_side(when, operation, condition)
    options: dict[str, Any] = {"name": name, "when": when, "operation": operation}
    if side is not None:
        options.update(level=pgtrigger.Statement,
                       referencing=pgtrigger.Referencing(**{side: f"{side}_rows"}))
    else:
        options["condition"] = condition
    func = _row_func(channel, name) if side is None else _statement_func(channel, name, side)
    # A function of the trigger's own calling pgcelery's: what releases before the row
    # functions (pgcelery 0006) wrote, and what a model with parents, or a channel with
    # include_fields (an allow-list the row functions cannot take), still gets. The
    # renderings with include_fields as a deny-list leaked the table's other columns:
    # none is kept, so such a channel's trigger is written anew.
    calling = pgtrigger.Trigger(func=func, **options)
    if channel.model._meta.get_parent_list() or channel.include_fields is not None:
        return [calling]
    function = sql.ROW_FUNCTION if side is None else sql.ROWS_FUNCTION
    return [_DirectTrigger(execute=_execute(function, channel, name), **options), calling]


def register(
    channel: type[channels.TriggerChannel],
    *,
    when: pgtrigger.When,
    operation: pgtrigger.Operation,
    condition: pgtrigger.Condition | None = None,
) -> str:
    """Registers (once) the trigger for this channel, timing and operation; returns its name."""
    model = channel.model
    name = channels.channel_name(channel)
    probe = pgtrigger.Trigger(name="probe", when=when, operation=operation, condition=condition)
    # pgtrigger annotates the model class it takes as a model instance.
    trigger_name = _name(name, when, operation,
                         probe.render_condition(model))  # type: ignore[arg-type]
    try:
        pgtrigger.registered(f"{model._meta.label}:{trigger_name}")
    except KeyError:
        ListenerTrigger(_renderings(channel, trigger_name, when, operation, condition)).register(
            model)  # type: ignore[arg-type]
    return trigger_name
