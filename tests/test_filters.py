"""PGCELERY_NOTIFICATION_FILTER: a bridge claims the notifications whose context matches
and leaves the rest pending for another bridge, as django-pgpubsub's listener filter."""

import json

import pytest
from celery import current_app
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Q
from django.test import override_settings

import pgcelery
from pgcelery import conf, messages
from pgcelery.bridge import Bridge
from pgcelery.models import Notification
from tests import support
from tests.testapp.channels import Message

pytestmark = pytest.mark.django_db(transaction=True)


class GlobexOnly(pgcelery.ListenerFilterProvider):
    """Written for django-pgpubsub, which kept the context inside the payload."""

    def get_filter(self):
        return Q(payload__context__tenant="globex")


def notify_for(tenant):
    with transaction.atomic():
        if tenant is not None:
            pgcelery.set_notification_context({"tenant": tenant})
        pgcelery.notify(Message, text=str(tenant))


def drained(notification_filter):
    """The texts a bridge with ``notification_filter`` published, in order."""
    support.purge_queues()
    with override_settings(PGCELERY_NOTIFICATION_FILTER=notification_filter):
        bridge = Bridge(current_app._get_current_object(), batch_size=10)
    bridge.connect()
    try:
        bridge.drain()
    finally:
        bridge.close()
    return [json.loads(message.decode()[1][messages.ENVELOPE]["payload"])["text"]
            for message in support.take_messages("celery")]


def pending():
    return sorted(row.payload["text"] for row in Notification.objects.all())


def test_each_bridge_takes_its_tenants_notifications_and_leaves_the_others():
    for tenant in ["acme", "globex", None, "acme", "acme-east"]:
        notify_for(tenant)
    assert drained(Q(context__tenant="acme")) == ["acme", "acme"]
    assert pending() == ["None", "acme-east", "globex"]
    assert drained("tests.test_filters.GlobexOnly") == ["globex"]
    assert drained(Q(context__tenant__startswith="acme-")) == ["acme-east"]
    assert pending() == ["None"]
    assert drained(None) == ["None"]
    assert pending() == []


@pytest.mark.parametrize(("value", "message"), [
    (Q(tenant="acme"), "PGCELERY_NOTIFICATION_FILTER: Cannot resolve keyword 'tenant'"),
    ({"tenant": "acme"}, "PGCELERY_NOTIFICATION_FILTER must be a Q on pgcelery's Notification"),
    ("tests.test_filters.Nothing", "PGCELERY_NOTIFICATION_FILTER is 'tests.test_filters.Nothing"),
])
def test_an_unusable_filter_stops_the_bridge_at_start(value, message):
    with override_settings(PGCELERY_NOTIFICATION_FILTER=value), \
            pytest.raises(ImproperlyConfigured, match=message):
        conf.check()
