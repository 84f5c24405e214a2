"""The three roles of the Privileges section (docs/how-to/production.md), as real
non-superuser roles.

The app role writes and the worker role runs the listeners, neither with a privilege on
pgcelery's tables, each executing only the functions it needs (PGCELERY_APP_ROLES,
PGCELERY_WORKER_ROLES); the bridge role drains the outbox with its few grants; the
migrations owner (the test's own, superuser, connection) owns everything.
"""

import secrets

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings

from pgcelery import channels, checks, privileges, sql
from pgcelery.models import Delivery, Notification, TaskRecord
from tests import support
from tests.testapp.models import Event

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("transactional_db")]

MESSAGE = "tests.testapp.channels.Message"

#: What the app's own tables need; nothing on pgcelery's.
APP_GRANTS = """
GRANT SELECT, INSERT, UPDATE, DELETE ON testapp_writer, testapp_event TO {role};
GRANT USAGE ON SEQUENCE testapp_writer_id_seq, testapp_event_id_seq TO {role};
"""
#: The bridge role's grants, as the documentation lists them.
BRIDGE_GRANTS = """
GRANT SELECT, INSERT, UPDATE, DELETE ON pgcelery_notification, pgcelery_delivery TO {role};
GRANT USAGE ON SEQUENCE pgcelery_notification_id_seq TO {role};
GRANT SELECT, DELETE ON pgcelery_taskrecord TO {role};
GRANT SELECT, INSERT, DELETE ON pgcelery_batch, pgcelery_waiting TO {role};
GRANT USAGE ON SEQUENCE pgcelery_waiting_id_seq TO {role};
"""


#: Every function of the worker's, old versions kept for rolling deploys included, with
#: arguments a writer could forge records with.
WORKER_CALLS = {
    "pgcelery_record_task_v1": "SELECT pgcelery_record_task_v1('a task id')",
    "pgcelery_record_tasks_v1": "SELECT pgcelery_record_tasks_v1(ARRAY['a task id'])",
    "pgcelery_finish_delivery_v1": "SELECT pgcelery_finish_delivery_v1('a task id')",
    "pgcelery_delivery_finished_v1": "SELECT pgcelery_delivery_finished_v1('a task id')",
    "pgcelery_postpone_delivery_v1": "SELECT pgcelery_postpone_delivery_v1('a task id', 1)",
    "pgcelery_fail_delivery_v1": f"SELECT pgcelery_fail_delivery_v1('{MESSAGE}', '', "
                                 "'{\"text\": \"forged\"}', NULL, 'forged', 'listener', "
                                 "'a task id', 1)",
    "pgcelery_fail_delivery_v2": f"SELECT pgcelery_fail_delivery_v2('{MESSAGE}', '', "
                                 "'{\"text\": \"forged\"}', NULL, 'forged', 'listener', "
                                 "'a task id', 1, 1, NULL)",
}


@pytest.fixture
def roles():
    """Creates login roles named ``app``, ``worker``, ``bridge``, ``partial`` (the bridge's
    grants but INSERT on the outbox) and ``stranger`` (no grant); drops them after the test,
    and gives EXECUTE on pgcelery's functions back to PUBLIC, as the other tests have it."""
    suffix = secrets.token_hex(4)
    kinds = ("app", "worker", "bridge", "partial", "stranger")
    made = {kind: f"pgcelery_test_{kind}_{suffix}" for kind in kinds}
    with connection.cursor() as cursor:
        for role in made.values():
            cursor.execute(f"CREATE ROLE {role} LOGIN")
        for kind in ("app", "worker"):
            cursor.execute(APP_GRANTS.format(role=made[kind]))
        for kind in ("bridge", "partial"):
            cursor.execute(BRIDGE_GRANTS.format(role=made[kind]))
        cursor.execute(f"REVOKE INSERT ON pgcelery_notification FROM {made['partial']}")
    yield made
    with connection.cursor() as cursor:
        cursor.execute(privileges.FUNCTIONS)
        for function, *_ in cursor.fetchall():
            cursor.execute(f"GRANT EXECUTE ON FUNCTION {function} TO PUBLIC")
        for role in made.values():
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


@pytest.fixture
def narrowed(roles):
    """The roles named in the settings, and ``migrate`` run as a deploy runs it."""
    with override_settings(PGCELERY_APP_ROLES=[roles["app"]],
                           PGCELERY_WORKER_ROLES=[roles["worker"]]):
        call_command("migrate", verbosity=0)
    return roles


def as_role(role, **extra):
    """A subprocess environment connecting to the test database as ``role``."""
    settings = {**connection.settings_dict, "USER": role, "PASSWORD": ""}
    return support.subprocess_env(DATABASE_URL=support.database_url(settings), **extra)


def run_as(role, statement, params=None):
    """Runs ``statement`` as ``role``, in a transaction of its own; returns its rows."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL ROLE {role}")
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def test_the_app_role_writes_only_through_pgcelerys_functions(narrowed):
    run_as(narrowed["app"], "INSERT INTO testapp_writer (name, email) VALUES ('role', '')")
    run_as(narrowed["app"], sql.NOTIFY,
           [MESSAGE, channels.pg_channel(MESSAGE), "", '{"text": "role"}'])
    with pytest.raises(Exception, match="permission denied for table pgcelery_notification"):
        run_as(narrowed["app"], "INSERT INTO pgcelery_notification (uuid, channel, trigger, "
               "payload, created_at) VALUES (gen_random_uuid(), 'x', '', '{}', now())")
    with connection.cursor() as cursor:
        cursor.execute("SELECT channel FROM pgcelery_notification ORDER BY id")
        assert [channel for (channel,) in cursor.fetchall()] == [
            "tests.testapp.channels.WriterChannel", MESSAGE]


@pytest.mark.parametrize("function", sorted(WORKER_CALLS))
def test_a_writer_role_cannot_forge_the_workers_records(narrowed, function):
    """Task ids are derived, so a run pre-recorded by a writer would be skipped as done; a
    forged failed delivery would reach a listener on an admin's retry."""
    with pytest.raises(Exception, match=f"permission denied for function {function}"):
        run_as(narrowed["app"], WORKER_CALLS[function])
    with pytest.raises(Exception, match=f"permission denied for function {function}"):
        run_as(narrowed["stranger"], WORKER_CALLS[function])
    run_as(narrowed["worker"], WORKER_CALLS[function])


def test_nothing_is_left_to_public(narrowed):
    with connection.cursor() as cursor:
        cursor.execute(privileges.FUNCTIONS)
        found = {name: set(grantees) for _, name, _, grantees in cursor.fetchall()}
    writers = {narrowed["app"], narrowed["worker"]}
    assert found == {name: writers if name in privileges.WRITER_FUNCTIONS
                     else {narrowed["worker"]} for name in found}
    assert set(WORKER_CALLS) == set(found) - privileges.WRITER_FUNCTIONS
    with pytest.raises(Exception, match="permission denied for function pgcelery_notify_v1"):
        run_as(narrowed["stranger"], sql.NOTIFY,
               [MESSAGE, channels.pg_channel(MESSAGE), "", '{"text": "stranger"}'])


def test_a_role_named_later_gets_its_privileges_with_the_next_migrate(narrowed):
    with override_settings(PGCELERY_APP_ROLES=[narrowed["app"], narrowed["stranger"]],
                           PGCELERY_WORKER_ROLES=[narrowed["worker"]]):
        call_command("migrate", verbosity=0)
    run_as(narrowed["stranger"], sql.NOTIFY,
           [MESSAGE, channels.pg_channel(MESSAGE), "", '{"text": "now allowed"}'])
    with pytest.raises(Exception, match="permission denied for function pgcelery_record_task"):
        run_as(narrowed["stranger"], WORKER_CALLS["pgcelery_record_task_v1"])


def test_a_role_the_database_lacks_is_named_by_a_check_and_migrate_goes_on(narrowed):
    with override_settings(PGCELERY_APP_ROLES=[narrowed["app"], "pgcelery_test_no_such_role"],
                           PGCELERY_WORKER_ROLES=[narrowed["worker"]]):
        [warning] = checks.check_privilege_roles(databases=["default"])
        call_command("migrate", verbosity=0)
    assert warning.id == "pgcelery.W008"
    assert "'pgcelery_test_no_such_role'" in warning.msg
    run_as(narrowed["app"], sql.NOTIFY,
           [MESSAGE, channels.pg_channel(MESSAGE), "", '{"text": "still allowed"}'])


def test_roles_run_the_listeners_and_keep_their_records(narrowed, spawn):
    """The app role writes, the worker role runs an atomic listener, a failing one (its
    failed delivery recorded) and a redeliver_after one (its delivery marked finished),
    the bridge role drains: each with only its own grants."""
    spawn.worker(env=as_role(narrowed["worker"]), name="worker-role-worker")
    bridge = spawn.bridge(env=as_role(narrowed["bridge"]), name="bridge-role-bridge")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL ROLE {narrowed['app']}")
        for n in range(5):
            cursor.execute(sql.NOTIFY, [MESSAGE, channels.pg_channel(MESSAGE), "",
                                        f'{{"text": "role {n}"}}'])
        for name, payload in (("Counted", '{"n": 1}'), ("Outcome", '{"n": 2}'),
                              ("Kept", '{"n": 3}')):
            channel = f"tests.testapp.channels.{name}"
            cursor.execute(sql.NOTIFY, [channel, channels.pg_channel(channel), "", payload])
    support.wait_until(lambda: Notification.objects.filter(failed_at__isnull=False).exists(),
                       what="the failing listener's failed delivery")
    support.settle()
    assert bridge.stop() == 0
    assert sorted(Event.objects.filter(listener="message_received").values_list(
        "data__text", flat=True)) == [f"role {n}" for n in range(5)]
    assert Event.objects.filter(listener="count_once").count() == 1
    assert TaskRecord.objects.count() == 1
    [failed] = Notification.objects.all()
    assert (failed.listener, failed.attempts) == ("tests.testapp.listeners.outcome_fails", 1)
    assert Delivery.objects.filter(finished_at__isnull=False).count() == 1
    assert Delivery.objects.filter(finished_at__isnull=True).count() == 0


def test_a_bridge_without_its_privileges_stops_at_start_naming_them(roles):
    result = support.manage("pgcelery_bridge",
                            DATABASE_URL=as_role(roles["partial"])["DATABASE_URL"])
    assert result.returncode == 1
    assert (f"The bridge's role '{roles['partial']}' lacks INSERT on pgcelery_notification "
            "in database 'default'") in result.stderr
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pgcelery_notification")
        assert cursor.fetchone() == (0,)


def test_an_upgrade_grants_the_batches_table_to_the_bridge_roles_there_are(roles, spawn):
    """Migration 0009 adds a table the bridge writes: the roles that may delete from the
    outbox (bridge roles) get it, so a bridge role of an earlier release still starts."""
    with connection.cursor() as cursor:
        cursor.execute(f"REVOKE ALL ON pgcelery_batch FROM {roles['bridge']}")
    call_command("migrate", "pgcelery", "0008", verbosity=0)
    call_command("migrate", "pgcelery", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT has_table_privilege(%s, 'pgcelery_batch', 'SELECT, INSERT, "
                       "DELETE'), has_table_privilege(%s, 'pgcelery_batch', 'SELECT')",
                       [roles["bridge"], roles["app"]])
        assert cursor.fetchone() == (True, False)
    bridge = spawn.bridge(env=as_role(roles["bridge"]), name="upgraded-bridge-role")
    with connection.cursor() as cursor:
        cursor.execute(sql.NOTIFY, [MESSAGE, channels.pg_channel(MESSAGE), "", '{"text": "x"}'])
    support.wait_until(lambda: support.outbox_pending() == 0, what="the bridge role's drain")
    assert bridge.stop() == 0
    assert len(support.take_messages("celery")) == 1
