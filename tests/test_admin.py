
import pytest
from django.contrib.auth.models import User
from django.db import connection

from pgcelery.models import Notification

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/pgcelery/notification/"


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


@pytest.fixture
def failed_ids():
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pgcelery_notification (uuid, channel, trigger, payload, created_at, "
            "failed_at, failure) SELECT gen_random_uuid(), 'gone.channels.X', '', '{}', now(), "
            "now(), 'unknown channel ' || n FROM generate_series(1, 2) AS n RETURNING id"
        )
        return sorted(row[0] for row in cursor.fetchall())


def test_the_admin_lists_failed_notifications_with_their_reason(admin_client, failed_ids):
    page = admin_client.get(CHANGELIST, {"failed_at__isnull": "False"}).content.decode()
    assert "unknown channel 1" in page and "unknown channel 2" in page


def test_admin_actions_retry_and_discard(admin_client, failed_ids):
    first, second = failed_ids
    response = admin_client.post(CHANGELIST, {"action": "retry_failed",
                                              "_selected_action": [first]})
    assert response.status_code == 302
    retried = Notification.objects.get(pk=first)
    assert (retried.failed_at, retried.failure) == (None, None)
    admin_client.post(CHANGELIST, {"action": "discard_failed", "_selected_action": [second]})
    assert list(Notification.objects.values_list("id", flat=True)) == [first]


@pytest.fixture
def pending_id():
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pgcelery_notification (uuid, channel, trigger, payload, created_at) "
            "VALUES (gen_random_uuid(), 'tests.testapp.channels.Message', '', "
            "'{\"text\": \"pending\"}', now()) RETURNING id"
        )
        return cursor.fetchone()[0]


def test_pending_notifications_cannot_be_deleted_or_changed_from_the_admin(
        admin_client, pending_id, failed_ids):
    assert "delete_selected" not in admin_client.get(CHANGELIST).content.decode()
    admin_client.post(CHANGELIST, {"action": "delete_selected",
                                   "_selected_action": [pending_id], "post": "yes"})
    assert admin_client.get(f"{CHANGELIST}{pending_id}/delete/").status_code == 403
    assert admin_client.post(f"{CHANGELIST}{pending_id}/delete/",
                             {"post": "yes"}).status_code == 403
    assert admin_client.post(f"{CHANGELIST}{pending_id}/change/",
                             {"channel": "x"}).status_code == 403
    # The discard action leaves a pending notification alone; a failed one may be deleted.
    admin_client.post(CHANGELIST, {"action": "discard_failed",
                                   "_selected_action": [pending_id, failed_ids[0]]})
    assert admin_client.post(f"{CHANGELIST}{failed_ids[1]}/delete/",
                             {"post": "yes"}).status_code == 302
    pending = Notification.objects.get()
    assert (pending.pk, pending.channel) == (pending_id, "tests.testapp.channels.Message")
