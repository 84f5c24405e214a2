"""Channels declared as pgpubsub's users declare them: ``date: datetime.date = None``, a
subclass giving a field a default, ``lock_notifications``."""

import datetime
from dataclasses import dataclass

from pgcelery import Channel, TriggerChannel
from tests.pgpubsub_port.models import Author, Child, ChildOfAbstract, Media, Post


@dataclass
class Reads(Channel):
    model_id: int
    model_type: str
    date: datetime.date = None  # type: ignore[assignment]


@dataclass
class PostReads(Reads):
    model_type: str = "Post"


@dataclass
class MediaTriggerChannel(TriggerChannel):
    model = Media
    lock_notifications = True


@dataclass
class ChildTriggerChannel(TriggerChannel):
    model = Child
    lock_notifications = True


@dataclass
class ChildOfAbstractTriggerChannel(TriggerChannel):
    model = ChildOfAbstract
    lock_notifications = True


@dataclass
class AuthorTriggerChannel(TriggerChannel):
    model = Author
    lock_notifications = True


@dataclass
class PostTriggerChannel(TriggerChannel):
    model = Post
    lock_notifications = True
