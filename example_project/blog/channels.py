import datetime
from dataclasses import dataclass

from blog.models import Author
from pgcelery import Channel, TriggerChannel


@dataclass
class PostReads(Channel):
    model_id: int
    date: datetime.date


@dataclass
class AuthorTriggerChannel(TriggerChannel):
    model = Author
    lock_notifications = True
