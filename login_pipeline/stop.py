"""Stopping on a signal: the first SIGINT/SIGTERM asks the run loop to stop, a second exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)


class StopRequest:
    """SIGINT/SIGTERM once: stop after the batch in hand. Twice: exit at once (nothing more committed)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        self._event.set()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.request()
        log.info("%s: finishing the current batch, then stopping (again to exit at once)", signal.Signals(signum).name)

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if a stop is requested meanwhile."""
        self._event.wait(seconds)
