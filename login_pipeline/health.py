"""Liveness and readiness, from the little the run loop's events say: when it last came round, and
whether the member holds its assignment."""

from __future__ import annotations

import time
from typing import Callable

from login_pipeline.events import Assigned, Observer, Revoking, TurnStarted
from login_pipeline.status_server import Verdict


class Health(Observer):
    def __init__(
        self,
        liveness_timeout_s: float,
        output_alive: Callable[[], bool],
        stopping: Callable[[], bool],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._liveness_timeout_s = liveness_timeout_s
        self._output_alive = output_alive
        self._stopping = stopping
        self._monotonic = monotonic
        self._last_turn = monotonic()  # the loop came round at this time
        self._joined = False  # the member holds its assignment (possibly none)

    def turn_started(self, event: TurnStarted) -> None:
        self._last_turn = event.at

    def assigned(self, event: Assigned) -> None:
        self._joined = True

    def revoking(self, event: Revoking) -> None:
        self._joined = False

    def liveness(self) -> Verdict:
        """Live while the loop comes round within the liveness timeout (every wait inside it is shorter)."""
        stuck_for = self._monotonic() - self._last_turn
        if stuck_for > self._liveness_timeout_s:
            return Verdict(False, (f"the run loop has not come round for {stuck_for:.0f} s",))
        return Verdict(True)

    def readiness(self, silent_clusters: list[str]) -> Verdict:
        """Ready when both clusters answer, the member holds its assignment and the output is alive."""
        reasons = [f"the {name} cluster does not answer" for name in silent_clusters]
        if not self._joined:
            reasons.append("not a member of the consumer group (joining or rebalancing)")
        if not self._output_alive():
            reasons.append("the output is gone")
        if self._stopping():
            reasons.append("stopping")
        return Verdict(not reasons, tuple(reasons))
