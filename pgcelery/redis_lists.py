"""Task messages written straight to Redis lists: a batch's messages in one round trip.

kombu's Redis transport keeps a queue as a list of JSON-encoded messages, and publishes
each with its own LPUSH after routing it. For plain routes (the default exchange, no
priority, no expiry) the bridge writes the same JSON itself and sends every message of a
list in one LPUSH, through kombu's own client (so key prefixes and Sentinel apply).
``tests/test_publish.py`` checks the result against what kombu itself writes.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from pgcelery import celery_internals

#: Messages buffered before a flush, and their size in characters.
MAX_MESSAGES = 5000
MAX_CHARACTERS = 16 * 2**20

supports = celery_internals.is_redis_channel


class ListWriter:
    """Buffers wire messages per list and pushes each list's messages with one LPUSH."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._lists: dict[str, list[str]] = {}
        self._count = self._characters = 0
        # Delivery tags only need to be unique (kombu keys unacked messages by them): one
        # random prefix per writer and a counter cost less than a uuid4 per message.
        self._tag_prefix = uuid.uuid4().hex
        self._tags = itertools.count()

    def add(self, queue: str, message: Any, serializer: str, delivery_mode: Any) -> None:
        """Buffers a Celery task message (``app.amqp.create_task_message``) for ``queue``."""
        wire = celery_internals.redis_wire_message(
            self.channel, message, queue, serializer, delivery_mode,
            f"{self._tag_prefix}.{next(self._tags)}",
        )
        self._lists.setdefault(queue, []).append(wire)
        self._count += 1
        self._characters += len(wire)
        if self._count >= MAX_MESSAGES or self._characters >= MAX_CHARACTERS:
            self.flush()

    def flush(self) -> None:
        """Sends what is buffered; every message is in its list when this returns."""
        if not self._lists:
            return
        lists, self._lists = self._lists, {}
        self._count = self._characters = 0
        celery_internals.redis_push(self.channel, lists)
