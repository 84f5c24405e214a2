"""Ends a database call that hangs, so that a frozen server cannot freeze the bridge.

A PostgreSQL server that stops answering (a stopped process, a dead network path that
still acknowledges packets) leaves a driver blocked in a read that no client timeout of
libpq bounds, with its claim's locks held and stop signals ignored. The watchdog shuts
the socket of a call that outlives its deadline down: the driver raises at once, the
transaction is gone (its rows are claimed again later) and the bridge reconnects with
backoff, or stops.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

#: How often the watchdog looks at the calls in flight.
TICK = 0.25


class Watchdog:
    """One thread watching every guarded call of a process."""

    def __init__(self, stop_asked: Callable[[], bool], grace: float) -> None:
        """``stop_asked`` tells, from any thread, whether a stop signal arrived: the main
        thread's handler cannot run while a driver blocks it. Then the calls in flight get
        ``grace`` seconds more at most."""
        self._stop_asked, self._grace = stop_asked, grace
        self._calls: dict[int, tuple[Callable[[], int], float, str]] = {}
        self._lock = threading.Lock()
        self._serial = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, fileno: Callable[[], int], seconds: float, what: str) -> Iterator[None]:
        """Shuts the socket ``fileno()`` down if the block runs longer than ``seconds``."""
        key = next(self._serial)
        with self._lock:
            self._calls[key] = (fileno, time.monotonic() + seconds, what)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="pgcelery-watchdog",
                                                daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                del self._calls[key]

    def hurry(self, seconds: float) -> None:
        """Gives the calls in flight at most ``seconds`` more (a stop was asked)."""
        latest = time.monotonic() + seconds
        with self._lock:
            for key, (fileno, deadline, what) in self._calls.items():
                self._calls[key] = (fileno, min(deadline, latest), what)

    def _watch(self) -> None:
        hurried = False
        while True:
            time.sleep(TICK)
            if not hurried and self._stop_asked():
                self.hurry(self._grace)
                hurried = True
            now = time.monotonic()
            with self._lock:
                late = [(key, *call) for key, call in self._calls.items() if call[1] <= now]
                for key, *_ in late:
                    self._calls[key] = (self._calls[key][0], float("inf"), self._calls[key][2])
            for _, fileno, _, what in late:
                logger.error("%s did not answer in time: its connection is closed.", what)
                _shut_down(fileno)


def _shut_down(fileno: Callable[[], int]) -> None:
    """Shuts the socket down for both directions; a read blocked on it returns at once."""
    with contextlib.suppress(Exception):
        duplicate = socket.socket(fileno=os.dup(fileno()))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()
