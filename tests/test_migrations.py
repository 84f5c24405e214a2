"""pgcelery's migrations: their SQL is frozen, and every way of migrating ends the same."""

import hashlib
import json

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import RunSQL
from django.test import override_settings

from pgcelery import sql
from pgcelery.checks import check_listener_triggers_migrated, check_trigger_migrations
from tests import support
from tests.testapp.models import Reading

#: The SHA-256 of the SQL each pgcelery migration runs (of nothing, where it runs none).
#: Databases were migrated with exactly this SQL: a change goes into a new migration, never
#: into one of these.
FROZEN = {
    "0001_initial": "ea16fc9fd9a20b7fdb330a4474395b6206a2c8a19dacd2a06ad83a895234bdc9",
    "0002_notification_size": "514445c7a0a78fd1e1fdf4fe0e3cfeb062f88a74e48be94ee0740fad8e26ec7c",
    "0003_failed_deliveries": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "0004_deliveries": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    # 0005 and 0006 changed once, knowingly: their search_path put the functions in
    # pg_catalog, which pg_dump leaves out; 0008 moves the functions of databases migrated
    # before (tests/test_schema.py).
    "0005_functions_run_as_owner":
        "a735626a52110ca3efa1322ecb3b742dfa21947f0f15681237ee451cff4fdf75",
    "0006_batches_and_row_functions":
        "02237a00940705eca4ee9acb46a1394789b1639b766316123984f70f514b7857",
    "0007_keep_pending_notifications":
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "0008_functions_out_of_pg_catalog":
        "845591f01d3b51ccf261a38a53b518d564e0812276e06b00ffc413cfcff6ff39",
    "0009_formed_batches": "37c79d34014bc125b4f476c50a6f5e6ee208c0698973c0302838ebfa4c0aeaee",
    "0010_keyed_listeners": "39a6d34b44be70b83475c4f500eea3f01a47090cef32e6f20f9294c95faaa2f7",
}

#: pgcelery's tables, functions, indexes and constraints, and the triggers apps installed.
SCHEMA = """
SELECT 'function', p.proname, pg_get_functiondef(p.oid)
FROM pg_proc AS p WHERE p.proname LIKE 'pgcelery%%' OR p.proname LIKE 'pgtrigger_pgcelery%%'
UNION ALL
SELECT 'column', table_name || '.' || column_name,
       concat_ws(' ', data_type, is_nullable, column_default)
FROM information_schema.columns WHERE table_name LIKE 'pgcelery%%'
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'pgcelery%%'
UNION ALL
SELECT 'constraint', conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid::regclass::text LIKE 'pgcelery%%'
UNION ALL
SELECT 'trigger', tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname LIKE 'pgtrigger_%%'
ORDER BY 1, 2
"""


def pgcelery_migrations():
    """pgcelery's migrations, in the order they apply."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    [latest] = loader.graph.leaf_nodes("pgcelery")
    return [loader.disk_migrations[key] for key in loader.graph.forwards_plan(latest)]


def migration_sql(migration) -> str:
    return "\n".join(f"{op.sql}\n{op.reverse_sql}" for op in migration.operations
                     if isinstance(op, RunSQL))


def test_the_sql_of_each_migration_is_frozen():
    found = {m.name: hashlib.sha256(migration_sql(m).encode()).hexdigest()
             for m in pgcelery_migrations()}
    assert set(found) == set(FROZEN), "a pgcelery migration was added, removed or renamed"
    changed = [name for name, digest in FROZEN.items() if found[name] != digest]
    assert not changed, (
        f"The SQL of migration(s) {changed} changed. Migrations are frozen: put the change "
        "in a new migration, with a new version of any function it alters."
    )


def migrate(name: str, *args: str) -> None:
    url = support.database_url({**connection.settings_dict, "NAME": name})
    result = support.manage("migrate", *args, DATABASE_URL=url)
    assert result.returncode == 0, result.stderr


def schema(name: str) -> list[tuple[str, str, str]]:
    other = type(connections["default"])({**connection.settings_dict, "NAME": name}, "default")
    try:
        with other.cursor() as cursor:
            cursor.execute(SCHEMA)
            return cursor.fetchall()
    finally:
        other.close()


@pytest.mark.e2e  # runs a manage.py command as a subprocess
def test_migrating_from_zero_step_by_step_or_back_and_forth_ends_the_same(fresh_databases):
    at_once, step_by_step = fresh_databases(), fresh_databases()
    migrate(at_once)
    for migration in pgcelery_migrations():
        migrate(step_by_step, "pgcelery", migration.name)
    migrate(step_by_step)
    expected = schema(at_once)
    assert {kind for kind, _, _ in expected} == {"function", "column", "index", "constraint",
                                                 "trigger"}
    assert schema(step_by_step) == expected
    migrate(at_once, "pgcelery", "zero")
    assert not [name for kind, name, _ in schema(at_once) if name.startswith("pgcelery")]
    migrate(at_once)
    assert schema(at_once) == expected


def test_a_listener_trigger_missing_from_the_migrations_is_a_warning():
    """As after declaring a listener without running makemigrations: its trigger would
    never be installed, and nothing else would say so."""
    assert check_listener_triggers_migrated() == []
    with override_settings(MIGRATION_MODULES={"testapp": "tests.stale_migrations"}):
        [warning] = check_listener_triggers_migrated()
    assert (warning.id, warning.obj) == ("pgcelery.W001", Reading)
    assert "is not in the migrations of 'testapp' as it is declared" in warning.msg
    assert warning.hint == "Run `python manage.py makemigrations testapp`, then `migrate`."


@pytest.mark.django_db
def test_a_trigger_migration_without_its_pgcelery_dependency_is_an_error():
    """A trigger that executes pgcelery's function cannot be created before it exists."""
    assert check_trigger_migrations() == []
    with override_settings(MIGRATION_MODULES={"testapp": "tests.unordered_migrations"}):
        [error] = check_trigger_migrations()
        assert error.id == "pgcelery.E001"
        assert error.hint == ("Add ('pgcelery', '0006_batches_and_row_functions') to the "
                              "dependencies of testapp.0001_initial.")
        # migrate runs the database checks: it stops before migrating anything.
        with pytest.raises(SystemCheckError, match="pgcelery.E001"):
            call_command("check", databases=["default"])


@pytest.mark.django_db
def test_a_released_trigger_migration_without_the_dependency_stops_nothing():
    """As earlier releases wrote them (and their users applied them): the trigger's own
    function calls pgcelery's, which PostgreSQL looks up only when it runs."""
    with override_settings(MIGRATION_MODULES={"testapp": "tests.released_migrations"}):
        assert check_trigger_migrations() == []
        call_command("check", databases=["default"])


@pytest.mark.e2e  # runs a manage.py command as a subprocess
def test_unmigrating_pgcelery_refuses_while_notifications_are_pending(fresh_databases):
    """Instead of dropping them with the outbox (a notify() row), or failing half way."""
    name = fresh_databases()
    migrate(name)
    url = support.database_url({**connection.settings_dict, "NAME": name})
    other = type(connections["default"])({**connection.settings_dict, "NAME": name}, "default")
    try:
        with other.cursor() as cursor:
            for text in ("one", "two"):
                cursor.execute(sql.NOTIFY, ["tests.testapp.channels.Message",
                                            "tests.testapp.channels.Message", "",
                                            json.dumps({"text": text})])
            cursor.execute("INSERT INTO testapp_writer (name, email) VALUES ('Ada', '')")
            refused = support.manage("migrate", "pgcelery", "zero", DATABASE_URL=url)
            assert refused.returncode == 1
            assert "holds 3 pending notification(s)" in refused.stderr
            cursor.execute("SELECT count(*) FROM pgcelery_notification")
            assert cursor.fetchone() == (3,)
            cursor.execute("DELETE FROM pgcelery_notification")
            cursor.execute(
                "INSERT INTO pgcelery_waiting (listener, key, notification, position, seed, "
                "channel, trigger, payload, created_at) VALUES ('tests.testapp.listeners."
                "keyed_in_order', '1', 1, 0, gen_random_uuid(), 'tests.testapp.channels."
                "KeyedInOrder', '', '{}', now())")
            refused = support.manage("migrate", "pgcelery", "zero", DATABASE_URL=url)
            assert refused.returncode == 1
            assert "holds 1 notification(s) waiting for their keys" in refused.stderr
            cursor.execute("DELETE FROM pgcelery_waiting")
    finally:
        other.close()
    migrate(name, "pgcelery", "zero")
    assert not [row for row in schema(name) if row[1].startswith("pgcelery_notification")]
