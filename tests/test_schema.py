"""Where pgcelery's functions live: in the schema the migrations run in, as Django's own
tables, so that a non-superuser owner can migrate and ``pg_dump`` keeps them; and an upgrade
from a release that created them in pg_catalog moves them out."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from django.db import connection

from tests import support

pytestmark = [pytest.mark.e2e, pytest.mark.connector]

#: The last release whose migrations created the functions in pg_catalog.
PG_CATALOG_RELEASE = "a44430f"

FUNCTIONS = """
SELECT p.proname, p.pronamespace::regnamespace::text, p.prosecdef,
       coalesce(array_to_string(p.proconfig, ';'), ''), pg_get_userbyid(p.proowner)
FROM pg_proc AS p WHERE p.proname LIKE 'pgcelery\\_%' ORDER BY 1
"""

WRITE = (
    "import pgcelery\n"
    "from tests.testapp.channels import Message\n"
    "from tests.testapp.models import Writer\n"
    "Writer.objects.create(name='written')\n"
    "pgcelery.notify(Message, text='written')\n"
)


@pytest.fixture
def owner_role(transactional_db):
    """A role that owns its database and nothing else: no superuser."""
    name = f"pgcelery_owner_{os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP ROLE IF EXISTS "{name}"')
        cursor.execute(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
    yield name
    with connection.cursor() as cursor:
        cursor.execute(f'DROP ROLE IF EXISTS "{name}"')


def url(name: str, user: str | None = None) -> str:
    settings = {**connection.settings_dict, "NAME": name}
    if user is not None:
        settings.update(USER=user, PASSWORD="")
    return support.database_url(settings)


def manage(name: str, *args: str, user: str | None = None,
           pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {"DATABASE_URL": url(name, user)}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(support.ROOT),
                                             str(support.EXAMPLE)])
    return support.manage(*args, **env)


def migrated(name: str, *args: str, **options) -> None:
    result = manage(name, "migrate", *args, **options)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def functions(name: str) -> list[tuple]:
    result = psql(name, "-At", "-F", "|", "-c", FUNCTIONS)
    return [tuple(line.split("|")) for line in result.stdout.splitlines()]


def psql(name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    settings = connection.settings_dict
    result = subprocess.run(
        ["psql", "-v", "ON_ERROR_STOP=1", "-h", settings["HOST"] or "127.0.0.1",
         "-p", str(settings["PORT"] or 5432), "-U", settings["USER"], "-d", name, *args],
        input=stdin, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def restored_copy(source: str, target: str) -> None:
    """``pg_dump`` of ``source``, restored into the empty database ``target``."""
    settings = connection.settings_dict
    dump = subprocess.run(
        ["pg_dump", "-h", settings["HOST"] or "127.0.0.1", "-p", str(settings["PORT"] or 5432),
         "-U", settings["USER"], "--no-owner", source],
        capture_output=True, text=True, timeout=120, check=True).stdout
    psql(target, stdin=dump)


def assert_delivered(name: str, log_dir: Path, user: str | None = None) -> None:
    """A trigger write and a notify() on database ``name``, run by the real bridge and worker."""
    written = manage(name, "shell", "-c", WRITE, user=user)
    assert written.returncode == 0, written.stderr[-3000:]
    env = support.subprocess_env(DATABASE_URL=url(name, user))
    processes = [support.start_bridge(log_dir, env=env), support.start_worker(log_dir, env=env)]
    try:
        support.wait_until(lambda: len(events(name)) == 2, what="the two listeners' events")
    finally:
        for process in processes:
            process.stop()
    assert events(name) == ["message_received", "writer_inserted"]


def events(name: str) -> list[str]:
    return psql(name, "-At", "-c", "SELECT listener FROM testapp_event ORDER BY 1").stdout.split()


def assert_in_their_schema(found: list[tuple], schema: str = "public") -> None:
    assert {name for name, *_ in found} >= {
        "pgcelery_notify_v1", "pgcelery_row_v1", "pgcelery_rows_v1", "pgcelery_record_task_v1"}
    assert {(name, where) for name, where, *_ in found if where != schema} == set()
    assert {(name, config) for name, _, definer, config, _ in found
            if definer == "t" and config != f"search_path={schema}, pg_temp"} == set()


def test_a_superusers_migrate_puts_the_functions_in_the_schema_and_a_backup_keeps_them(
        fresh_databases, log_dir):
    source, target = fresh_databases(), fresh_databases()
    migrated(source)
    assert_in_their_schema(functions(source))
    restored_copy(source, target)
    assert_in_their_schema(functions(target))
    assert_delivered(target, log_dir)


def test_a_non_superuser_owner_migrates_and_a_backup_keeps_the_functions(
        owner_role, fresh_databases, log_dir):
    source, target = fresh_databases(owner=owner_role), fresh_databases()
    migrated(source, user=owner_role)
    found = functions(source)
    assert_in_their_schema(found)
    assert {owner for *_, owner in found} == {owner_role}
    restored_copy(source, target)
    assert_in_their_schema(functions(target))
    assert_delivered(source, log_dir, user=owner_role)
    assert_delivered(target, log_dir)


def test_an_upgrade_moves_the_functions_out_of_pg_catalog(fresh_databases, tmp_path, log_dir):
    source, target = fresh_databases(), fresh_databases()
    migrated(source, pythonpath=support.released_pgcelery(PG_CATALOG_RELEASE, tmp_path))
    before = functions(source)
    assert {name for name, where, *_ in before if where == "pg_catalog"} >= {
        "pgcelery_row_v1", "pgcelery_rows_v1", "pgcelery_record_task_v1"}
    check = manage(source, "check", "--database", "default")
    assert "pgcelery.W006" in check.stderr and "pgcelery_row_v1()" in check.stderr
    migrated(source)
    assert_in_their_schema(functions(source))
    assert "pgcelery.W006" not in manage(source, "check", "--database", "default").stderr
    restored_copy(source, target)
    assert_delivered(target, log_dir)
