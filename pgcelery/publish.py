"""Talking to the broker: one connection for every message the bridge sends."""

from __future__ import annotations

import logging

import kombu.exceptions
from celery import Celery, current_app
from django.utils.module_loading import import_string
from kombu import Connection

from pgcelery import conf, messages
from pgcelery.listeners import Listener

logger = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The broker refused or lost the connection; nothing after it was published."""


def celery_app() -> Celery:
    """The Celery app of the project: ``PGCELERY_CELERY_APP`` or the current app."""
    path = conf.celery_app()
    return import_string(path.replace(":", ".")) if path else current_app._get_current_object()


class Publisher:
    """Sends task messages on one broker connection, opened lazily and again after a failure.

    Publisher confirms are asked for (AMQP brokers honour them, Redis ignores the option),
    so a send returns only once the broker has the message.
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
        try:
            self.app.send_task(
                listener.task_name,
                kwargs={messages.ENVELOPE: messages.envelope(row, database)},
                task_id=messages.task_id(row.uuid, listener.task_name, listener.trigger),
                producer=self._open(),
                retry=False,
                add_to_parent=False,
                **listener.options,
            )
        except kombu.exceptions.OperationalError as exc:
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
