"""The task message's parts that need no broker or database."""

import uuid

from pgcelery import messages


def test_task_ids_are_the_uuid5_of_the_notification_listener_and_position():
    for position in range(50):
        row = messages.Row(1, position, uuid.uuid4(), "a.channels.C", "", "{}", None)
        expected = uuid.uuid5(row.uuid, f"app.tasks.listener|pgcelery_after_i_0|{position}")
        assert messages.task_id(row, "app.tasks.listener", "pgcelery_after_i_0") == str(expected)
