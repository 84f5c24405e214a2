import json
import uuid

import pytest
from django.db import connection, connections

import pgcelery
from pgcelery.status import channel_status
from tests import support
from tests.testapp.channels import Message

pytestmark = pytest.mark.django_db(transaction=True)


def status(*args, **env):
    return support.manage("pgcelery_status", *args, **env)


@pytest.mark.e2e  # runs a manage.py command as a subprocess
def test_status_lists_pending_rows_per_channel_and_exits_0():
    assert json.loads(status("--json").stdout) == {"channels": []}
    for n in range(3):
        pgcelery.notify(Message, text=str(n))
    result = status("--json")
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)["channels"]
    assert entry.pop("oldest_pending_seconds") >= 0
    assert entry == {"channel": "tests.testapp.channels.Message", "pending": 3, "waiting": 0,
                     "failed": 0, "failures": []}
    table = status()
    assert table.returncode == 0
    assert "tests.testapp.channels.Message" in table.stdout


@pytest.mark.e2e  # runs a manage.py command as a subprocess
def test_failed_rows_exit_2_with_their_reasons():
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pgcelery_notification (uuid, channel, trigger, payload, created_at, "
            "failed_at, failure) VALUES (%s, 'x.channels.Y', '', '{}', now(), now(), 'why') "
            "RETURNING id", [uuid.uuid4()],
        )
        failed_id = cursor.fetchone()[0]
    result = status("--json")
    assert result.returncode == 2
    assert json.loads(result.stdout)["channels"] == [{
        "channel": "x.channels.Y", "pending": 0, "waiting": 0, "oldest_pending_seconds": None,
        "failed": 1,
        "failures": [{"id": failed_id, "reason": "why", "listener": None, "task_id": None}],
    }]
    assert "why" in status().stdout


@pytest.mark.e2e  # runs a manage.py command as a subprocess
def test_status_exits_1_when_it_cannot_tell():
    url = support.database_url(connection.settings_dict)
    missing = status(DATABASE_URL=url.replace(connection.settings_dict["NAME"], "no_such_db"))
    assert missing.returncode == 1
    assert "Cannot read the pgcelery outbox" in missing.stderr
    name = f"pgcelery_unmigrated_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        unmigrated = status(DATABASE_URL=url.replace(connection.settings_dict["NAME"], name))
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE "{name}"')
    assert unmigrated.returncode == 1
    assert "manage.py migrate pgcelery" in unmigrated.stderr


def test_counts_and_failures_come_from_one_snapshot():
    """A failure committed between two reads of the status is in both or in neither."""
    writer = connections.create_connection("default")
    landed = []

    def a_failure_lands_after_each_statement(execute, statement, params, many, context):
        result = execute(statement, params, many, context)
        with writer.cursor() as cursor:
            cursor.execute(
                "INSERT INTO pgcelery_notification (uuid, channel, trigger, payload, created_at, "
                "failed_at, failure) VALUES (%s, %s, '', '{}', now(), now(), 'late')",
                [uuid.uuid4(), f"x.channels.Late{len(landed)}"],
            )
        landed.append(statement)
        return result

    try:
        with connection.execute_wrapper(a_failure_lands_after_each_statement):
            status = channel_status("default")
    finally:
        writer.close()
    assert landed
    for entry in status:
        assert entry["failed"] == len(entry["failures"]), entry
    assert len(channel_status("default")) == len(landed)
