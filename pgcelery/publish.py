"""Talking to the broker: one connection for every message the bridge sends."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import kombu.exceptions
from celery import Celery, current_app
from django.utils.module_loading import import_string
from kombu import Connection

from pgcelery import conf, messages
from pgcelery.listeners import Listener

logger = logging.getLogger(__name__)


#: Broker operations buffered before a batch is sent early.
BATCH_OPERATIONS = 5000


class BrokerUnavailable(Exception):
    """The broker refused or lost the connection; nothing after it was published."""


def celery_app() -> Celery:
    """The Celery app of the project: ``PGCELERY_CELERY_APP`` or the current app."""
    path = conf.celery_app()
    return import_string(path.replace(":", ".")) if path else current_app._get_current_object()


class Publisher:
    """Sends task messages on one broker connection, opened lazily and again after a failure.

    Publisher confirms are asked for (AMQP brokers honour them, Redis ignores the option),
    so a send returns only once the broker has the message. Inside :meth:`batch`, a
    transport that can pipeline (Redis, with kombu ≥ 5.7) sends the messages together.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._connection: Connection | None = None
        self._producer = None

    def publish(self, listener: Listener, row: messages.Row, database: str) -> None:
        """Sends the task of ``listener`` for ``row``.

        Raises:
            BrokerUnavailable: if the broker cannot be reached.
        """
        with self._broker_errors():
            self.app.send_task(
                listener.task_name,
                kwargs={messages.ENVELOPE: messages.envelope(row, database)},
                task_id=messages.task_id(row.uuid, listener.task_name, listener.trigger),
                producer=self._open(),
                retry=False,
                add_to_parent=False,
                # What monitoring shows of the arguments; also spares a repr of the payload.
                argsrepr="()",
                kwargsrepr=f"{{{messages.ENVELOPE!r}: <notification {row.id} on {row.channel}>}}",
                **listener.options,
            )

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Groups the publishes made inside; all of them reached the broker when it exits.

        Raises:
            BrokerUnavailable: if the broker cannot be reached; some of the messages may
                have been sent.
        """
        with self._broker_errors():
            producer = self._open()
            grouped = (producer.batch(max_size=BATCH_OPERATIONS) if hasattr(producer, "batch")
                       else contextlib.nullcontext())
            with grouped:
                yield

    @contextlib.contextmanager
    def _broker_errors(self) -> Iterator[None]:
        """Turns the broker's connection errors into BrokerUnavailable, closing the connection."""
        try:
            yield
        except BrokerUnavailable:
            raise
        except Exception as exc:
            connection = self._connection
            broker_errors = (kombu.exceptions.OperationalError,)
            if connection is not None:
                broker_errors += connection.connection_errors + connection.channel_errors
            if not isinstance(exc, broker_errors):
                raise
            self.close()
            raise BrokerUnavailable(str(exc)) from exc

    def _open(self):
        if self._producer is None:
            connection = self.app.connection_for_write(
                transport_options={"confirm_publish": True}
            )
            # Fail fast: the bridge has its own backoff, and keeps its rows meanwhile.
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            self._connection = connection
            self._producer = self.app.amqp.Producer(connection)
        return self._producer

    def close(self) -> None:
        if self._connection is not None:
            self._connection.collect()
        self._connection = self._producer = None
