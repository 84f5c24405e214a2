"""Task messages written straight to Redis lists: a batch's messages in one round trip.

kombu's Redis transport keeps a queue as a list of JSON-encoded messages, and publishes
each with its own LPUSH after routing it. For plain routes (the default exchange, no
priority, no expiry) the bridge writes the same JSON itself and sends every message of a
list in one LPUSH, through kombu's own client (so key prefixes and Sentinel apply). Each
route's messages are filled in from one that Celery and kombu built.
``tests/test_publish.py`` checks the result against what kombu itself writes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from kombu import serialization

from pgcelery import celery_internals

#: Messages buffered before a flush, and their size in characters.
MAX_MESSAGES = 5000
MAX_CHARACTERS = 16 * 2**20

supports = celery_internals.is_redis_channel

#: Builds a route's task message from (task id, kwargsrepr, kwargs).
MessageBuilder = Callable[[str, str, dict[str, Any]], Any]


#: What a template is checked with, once without headers of its own and once with.
_PROBE = ("pgcelery-probe", "{'probe': 1}", {"probe": [1, "\u00e9\"{}", None]}, "tag")
_PROBE_HEADERS = {"traceparent": "00-probe-01", "tracestate": "probe=1"}


@dataclasses.dataclass(frozen=True)
class Template:
    """One route's wire message, with what changes from one message to the next left open:
    the task id, the ``kwargsrepr``, the one keyword argument, headers added to Celery's
    (the writer's trace) and the delivery tag.

    Celery's building of a message and kombu's two JSON encodings of it were most of the
    bridge's time per message; filling a template is one small JSON encoding and a format.
    """

    #: The wire message as a ``str.format`` string with the fields ``id``, ``kwargsrepr``,
    #: ``body`` and ``tag``, each standing for a JSON string, and ``headers``, for the
    #: added headers' members.
    wire: str
    #: The body's JSON before and after the keyword argument's value.
    body: tuple[str, str]
    encode_body: Callable[[str], str]

    @classmethod
    def of(cls, channel: Any, build: MessageBuilder, keyword: str, queue: str,
           serializer: str, delivery_mode: Any) -> Template | None:
        """The template of a route's messages, or None where a message is more than its
        open fields: another serializer, or a field that changes by itself (an ``eta`` from
        ``countdown``, a time stamp of a newer Celery), which the probes show."""
        if serializer != "json":
            return None

        def wire_of(task_id: str, kwargsrepr: str, argument: Any, tag: str,
                    headers: dict[str, str] | None = None) -> str:
            message = build(task_id, kwargsrepr, {keyword: argument})
            message.headers.update(headers or {})
            return celery_internals.redis_wire_message(channel, message, queue, serializer,
                                                       delivery_mode, tag)

        encode_body = celery_internals.redis_body_encoder(channel)
        marks = {field: f"pgcelery{uuid.uuid4().hex}{field}"
                 for field in ("id", "kwargsrepr", "argument", "tag", "headers")}
        try:
            message = build(marks["id"], marks["kwargsrepr"], {keyword: marks["argument"]})
        except Exception:
            # Options Celery cannot make a message with (a countdown that is no number):
            # on the full path each notification fails with Celery's reason, and the
            # others go on.
            return None
        body = serialization.dumps(message.body, serializer)[2]
        before, _, after = body.partition(json.dumps(marks["argument"]))
        wire = wire_of(marks["id"], marks["kwargsrepr"], marks["argument"], marks["tag"],
                       {marks["headers"]: marks["headers"]})
        marks["body"] = encode_body(body)
        template = cls(_open_fields(wire, marks), (before, after), encode_body)
        probes_pass = all(template.render(*_PROBE, headers) == wire_of(*_PROBE, headers)
                          for headers in (None, _PROBE_HEADERS))
        return template if probes_pass else None

    def render(self, task_id: str, kwargsrepr: str, argument: Any, tag: str,
               headers: dict[str, str] | None = None) -> str:
        """The wire message of one task; ``headers`` are added to Celery's."""
        body = self.body[0] + json.dumps(argument) + self.body[1]
        added = ", " + json.dumps(headers)[1:-1] if headers else ""
        return self.wire.format(id=json.dumps(task_id), kwargsrepr=json.dumps(kwargsrepr),
                                body=json.dumps(self.encode_body(body)), tag=json.dumps(tag),
                                headers=added)


def _open_fields(wire: str, marks: dict[str, str]) -> str:
    """``wire`` as a format string: each mark's JSON string replaced by its field, and the
    header member ``"<headers mark>": "<headers mark>"`` (with its comma) by ``headers``."""
    member = json.dumps(marks["headers"])
    fields = {json.dumps(mark): "{" + field + "}" for field, mark in marks.items()}
    fields[f", {member}: {member}"] = "{headers}"
    pattern = "|".join(re.escape(found) for found in sorted(fields, key=len, reverse=True))
    escaped = wire.replace("{", "{{").replace("}", "}}")
    return re.sub(pattern, lambda found: fields[found.group()], escaped)


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

    def tag(self) -> str:
        """A new delivery tag."""
        return f"{self._tag_prefix}.{next(self._tags)}"

    def add(self, queue: str, wire: str) -> None:
        """Buffers a wire message for ``queue``."""
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
