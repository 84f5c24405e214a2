
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
