"""The commit seam: what is committed when, after which acknowledgement.

The run loop calls a `Checkpoint` at four points and nowhere else decides a commit:
- `delivered(batch)`: the output acknowledged the batch and every batch before it.
- `commit()`: at the end of every loop turn, after its deliveries.
- `before_revoke(partitions)`: inside the revoke handler, once what was in flight is settled.
- `final(timeout_s)`: at stop, after the last delivery.

`GroupCommits`, the at-least-once implementation, commits input offsets to the input cluster's
consumer group (login_pipeline.offsets holds the bookkeeping and its failure policy).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Protocol

from login_pipeline.client import Input, Partition
from login_pipeline.events import CommitAnswered, CommitSent, Observer
from login_pipeline.offsets import CommitPositions, InFlightBatch

log = logging.getLogger(__name__)


class Checkpoint(Protocol):
    """What the run loop commits, and when.

    - `delivered(batch)` records that a batch and all before it were acknowledged. Never blocks.
    - `commit()` commits what was delivered since the last commit, or everything delivered after a
      failed commit, without waiting for the answer (it may block only to send it); nothing is sent
      when nothing is due, so it is called every turn, idle or not.
    - `before_revoke(partitions)` returns the offsets to commit before `partitions` go (the Input
      commits them, waiting); they are forgotten afterwards. Called inside `Input.poll`/`close`.
    - `commit_answered(error)`: a background commit was answered (None: taken), from inside a poll.
    - `final(timeout_s)` commits every delivered position and waits at most `timeout_s`; False when
      that failed (a restart then repeats what was uncommitted: duplicates, never loss).
    - `positions`: the next offset after everything delivered, per partition (for the lag).
    - `pending`: partitions with delivered offsets not yet committed.
    """

    def delivered(self, batch: InFlightBatch) -> None: ...
    def commit(self) -> None: ...
    def before_revoke(self, partitions: set[Partition]) -> dict[Partition, int]: ...
    def commit_answered(self, error: Optional[str]) -> None: ...
    def final(self, timeout_s: float) -> bool: ...
    @property
    def positions(self) -> dict[Partition, int]: ...
    @property
    def pending(self) -> int: ...


class GroupCommits:
    """Checkpoint: offsets committed to the input's consumer group, each only after its acknowledgement.

    Background commits are sent without waiting (waiting took an eighth of the run loop's time,
    py-spy under load); they are answered in order, and after a failed one the next commit repeats
    every delivered position.
    """

    def __init__(self, consumer: Input, observer: Observer, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._input = consumer
        self._observer = observer
        self._monotonic = monotonic
        self._positions = CommitPositions()

    def delivered(self, batch: InFlightBatch) -> None:
        self._positions.delivered(batch)

    def commit(self) -> None:
        offsets = self._positions.take_commit()
        if offsets:
            began = self._monotonic()
            self._input.commit_in_background(offsets)
            self._observer.commit_sent(CommitSent(self._monotonic() - began))

    def before_revoke(self, partitions: set[Partition]) -> dict[Partition, int]:
        offsets = self._positions.take_commit()
        self._positions.forget(partitions)
        return offsets

    def commit_answered(self, error: Optional[str]) -> None:
        if error is not None:
            log.warning("commit failed (%s); will retry at the next turn", error)
        self._answered(error)

    def _answered(self, error: Optional[str]) -> None:
        if error is not None:
            self._positions.commit_failed()
        self._observer.commit_answered(CommitAnswered(error))

    def final(self, timeout_s: float) -> bool:
        offsets = self._positions.take_final_commit()
        if not offsets:
            return True
        began = self._monotonic()
        committed = self._input.commit(offsets, timeout_s)
        self._observer.commit_sent(CommitSent(self._monotonic() - began))
        self._answered(None if committed else "the final commit failed")
        return committed

    @property
    def positions(self) -> dict[Partition, int]:
        return self._positions.positions

    @property
    def pending(self) -> int:
        return self._positions.pending
