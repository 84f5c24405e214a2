"""pgcelery: PostgreSQL notifications as Celery tasks for Django projects."""

import importlib

from pgcelery.channels import BaseChannel, Channel, TriggerChannel, UnknownChannel
from pgcelery.filters import ListenerFilterProvider
from pgcelery.listeners import (
    listener,
    post_delete_listener,
    post_insert_listener,
    post_save_listener,
    post_update_listener,
    pre_delete_listener,
    pre_insert_listener,
    pre_save_listener,
    pre_update_listener,
    trigger_listener,
)
from pgcelery.notify import anotify, aset_notification_context, notify, set_notification_context

__version__ = "0.1.0"

__all__ = [
    "BaseChannel",
    "Channel",
    "ListenerFilterProvider",
    "TriggerChannel",
    "UnknownChannel",
    "anotify",
    "aset_notification_context",
    "listener",
    "notify",
    "post_delete_listener",
    "post_insert_listener",
    "post_save_listener",
    "post_update_listener",
    "pre_delete_listener",
    "pre_insert_listener",
    "pre_save_listener",
    "pre_update_listener",
    "set_notification_context",
    "trigger_listener",
]


def __getattr__(name: str) -> object:
    """``pgcelery.testing``, imported when a test first uses it, not with the app."""
    if name == "testing":
        return importlib.import_module("pgcelery.testing")
    raise AttributeError(f"module 'pgcelery' has no attribute {name!r}")
