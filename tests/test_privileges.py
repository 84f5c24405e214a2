"""The three roles of the Privileges section (docs/how-to/production.md), as real
non-superuser roles.

The app role writes and runs the listeners with no privilege on pgcelery's tables; the
bridge role drains the outbox with its few grants; the migrations owner (the test's own,
superuser, connection) owns everything.
"""

import secrets

import pytest
from django.db import connection, transaction

from pgcelery import channels, sql
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
"""


@pytest.fixture
def roles():
    """Creates login roles named ``app``, ``bridge`` and ``partial`` (the bridge's grants but
    INSERT on the outbox); drops them after the test."""
    suffix = secrets.token_hex(4)
    made = {kind: f"pgcelery_test_{kind}_{suffix}" for kind in ("app", "bridge", "partial")}
    with connection.cursor() as cursor:
        for role in made.values():
            cursor.execute(f"CREATE ROLE {role} LOGIN")
        cursor.execute(APP_GRANTS.format(role=made["app"]))
        for kind in ("bridge", "partial"):
            cursor.execute(BRIDGE_GRANTS.format(role=made[kind]))
        cursor.execute(f"REVOKE INSERT ON pgcelery_notification FROM {made['partial']}")
    yield made
    with connection.cursor() as cursor:
        for role in made.values():
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")


def as_role(role, **extra):
    """A subprocess environment connecting to the test database as ``role``."""
    settings = {**connection.settings_dict, "USER": role, "PASSWORD": ""}
    return support.subprocess_env(DATABASE_URL=support.database_url(settings), **extra)


def test_the_app_role_writes_only_through_pgcelerys_functions(roles):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL ROLE {roles['app']}")
        cursor.execute("INSERT INTO testapp_writer (name, email) VALUES ('role', '')")
        cursor.execute(sql.NOTIFY, [MESSAGE, channels.pg_channel(MESSAGE), "", '{"text": "role"}'])
        cursor.execute("SELECT pgcelery_record_task_v1('a task id')")
        assert cursor.fetchone() == (True,)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL ROLE {roles['app']}")
        with pytest.raises(Exception, match="permission denied for table pgcelery_notification"):
            cursor.execute("INSERT INTO pgcelery_notification (uuid, channel, trigger, payload, "
                           "created_at) VALUES (gen_random_uuid(), 'x', '', '{}', now())")
    with connection.cursor() as cursor:
        cursor.execute("SELECT channel FROM pgcelery_notification ORDER BY id")
        assert [channel for (channel,) in cursor.fetchall()] == [
            "tests.testapp.channels.WriterChannel", MESSAGE]


def test_a_bridge_role_drains_for_listeners_run_as_the_app_role(roles, spawn):
    spawn.worker(env=as_role(roles["app"]), name="app-role-worker")
    bridge = spawn.bridge(env=as_role(roles["bridge"]), name="bridge-role-bridge")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL ROLE {roles['app']}")
        for n in range(5):
            cursor.execute(sql.NOTIFY, [MESSAGE, channels.pg_channel(MESSAGE), "",
                                        f'{{"text": "role {n}"}}'])
    support.wait_until(lambda: Event.objects.filter(listener="message_received").count() >= 5,
                       what="the listeners, run as the app role")
    support.settle()
    assert bridge.stop() == 0
    assert sorted(Event.objects.values_list("data__text", flat=True)) == [
        f"role {n}" for n in range(5)]


def test_a_bridge_without_its_privileges_stops_at_start_naming_them(roles):
    result = support.manage("pgcelery_bridge",
                            DATABASE_URL=as_role(roles["partial"])["DATABASE_URL"])
    assert result.returncode == 1
    assert (f"The bridge's role '{roles['partial']}' lacks INSERT on pgcelery_notification "
            "in database 'default'") in result.stderr
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pgcelery_notification")
        assert cursor.fetchone() == (0,)
