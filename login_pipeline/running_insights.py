"""The running insights as an observer: every delivered batch counted once, a block printed every N messages.

At most one block per loop turn, so draining a backlog does not flood the terminal; the final block
at stop shows the lag read afresh. `this_instance` is this process's part of /api/insights.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, TextIO

from login_pipeline.client import Partition
from login_pipeline.events import Delivered, Observer, Stopped, TurnEnded
from login_pipeline.insights import Insights


class RunningInsights(Observer):
    def __init__(self, every: int, out: TextIO = sys.stdout) -> None:
        self.insights = Insights()  # the run loop's own: only its thread reads or changes it
        self.published = self.insights.reading()  # what other threads read, replaced after each batch
        self._every = every
        self._out = out
        self._blocks_printed = 0
        self.last_lag: Optional[int] = None  # records behind, over the assigned partitions, at the last turn

    def delivered(self, event: Delivered) -> None:
        # A message is counted once, when its batch is delivered, however often it was retried.
        self.insights.observe(event.batch.results)
        self.published = self.insights.reading()  # one reference, swapped whole: readers need no lock

    def turn_ended(self, event: TurnEnded) -> None:
        self.last_lag = _total(event.lags)
        if self.insights.processed // self._every > self._blocks_printed:
            self._blocks_printed = self.insights.processed // self._every
            self._print("insights")

    def stopped(self, event: Stopped) -> None:
        self.last_lag = _total(event.lags)
        self._print("final insights")

    def snapshot(self) -> dict[str, Any]:
        """Running totals, for /api/insights. Called from HTTP threads."""
        return self.published.snapshot(self.last_lag)

    def _print(self, title: str) -> None:
        print(self.insights.render(self.last_lag, title=title), file=self._out, flush=True)


def _total(lags: Optional[dict[Partition, int]]) -> Optional[int]:
    return sum(lags.values()) if lags else None
