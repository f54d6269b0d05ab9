"""How the processor runs a child process (the kafka-python output, the live insights): one way to start,
talk to and stop one.

- Spawned, so it inherits no threads or sockets from the parent; daemonic, so it never outlives it.
- It ignores SIGINT and SIGTERM (the parent decides when to stop) and logs as the parent does.
- Parent and child talk over one pipe in typed messages (NamedTuples), each side telling them
  apart by type, never by position in an untyped tuple. `Close` asks the child to end.
- `stop` sends `Close`, waits at most its timeout for the child to end, then kills it: bounded.
"""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.connection import Connection
from typing import Any, Callable, NamedTuple, Optional

from login_pipeline import logs


class Close(NamedTuple):
    """Parent to child: finish and exit."""


class Child:
    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], name: str, log_format: str) -> None:
        """Start `target(connection, *args)` in a child; `connection` is the child's end of the pipe."""
        context = multiprocessing.get_context("spawn")  # no threads or sockets inherited from the parent
        self.connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_run, args=(target, log_format, child_end, *args), name=name, daemon=True
        )
        self._process.start()
        child_end.close()

    @property
    def exitcode(self) -> Optional[int]:
        return self._process.exitcode

    def alive(self) -> bool:
        return self._process.is_alive()

    def stop(self, timeout_s: float) -> None:
        """Ask the child to end, wait at most `timeout_s`, then kill it; the pipe is closed after."""
        try:
            self.connection.send(Close())
        except OSError:
            pass  # the child is gone already
        self._process.join(timeout=timeout_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self.connection.close()


def _run(target: Callable[..., None], log_format: str, connection: Connection, *args: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(log_format)
    target(connection, *args)
