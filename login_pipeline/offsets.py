"""Offsets: what is in flight, what was delivered, what is still to commit. No I/O here.

The one failure policy: an offset is committed only after the output acknowledged its batch and
every batch before it; whatever goes wrong (a failed delivery, a failed commit, a revoke that could
not wait), offsets are left uncommitted or repeated, never skipped, so the cost is duplicates,
never loss.

Two records keep it: `InFlight`, the batches handed to the output in the order their reports come
(the run loop's), and `CommitPositions`, what was delivered and is still to commit (the
checkpoint's, login_pipeline.checkpoint).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from login_pipeline.client import Partition
from login_pipeline.results import ProcessingResult


@dataclass
class InFlightBatch:
    """A batch handed to the output whose report has not been read yet."""

    first_offsets: dict[Partition, int]
    next_offsets: dict[Partition, int]
    results: list[ProcessingResult] = field(repr=False)
    handed_at: float = 0.0  # monotonic clock when it was handed over
    processed_at: float = 0.0  # wall clock when it was processed (the windows count rejections at it)
    spans: list[tuple[int, int]] = field(default_factory=list)  # (partition, how many results), in order
    # Given up on after a rewind or a revoke: its report is read and ignored, nothing of it is committed.
    abandoned: bool = False


class InFlight:
    """Batches handed over, oldest first: their reports come in this order."""

    def __init__(self) -> None:
        self._batches: deque[InFlightBatch] = deque()

    def __len__(self) -> int:
        return len(self._batches)

    def handed_over(self, batch: InFlightBatch) -> None:
        self._batches.append(batch)

    def oldest(self) -> InFlightBatch:
        """The batch whose report comes next; it leaves the in-flight queue."""
        return self._batches.popleft()

    def abandon_all(self) -> None:
        """Their reports are still read, and ignored: nothing of them is committed."""
        for batch in self._batches:
            batch.abandoned = True

    def drop_all(self) -> None:
        """Their reports will never come (the output is gone): left uncommitted, and forgotten."""
        self._batches.clear()

    def rewind_from(self, failed: InFlightBatch) -> dict[Partition, int]:
        """Abandon the failed batch and every batch behind it; the first offsets among them, to seek to."""
        behind = [batch for batch in self._batches if not batch.abandoned]
        self.abandon_all()  # produced again after the rewind, whatever becomes of them
        first_offsets: dict[Partition, int] = {}
        for batch in reversed([failed, *behind]):  # older batches overwrite: the earliest offset wins
            first_offsets.update(batch.first_offsets)
        return first_offsets


class CommitPositions:
    """What was delivered, per partition, and what of it is still to commit."""

    def __init__(self) -> None:
        self._to_commit: dict[Partition, int] = {}  # delivered, not yet sent in a commit
        self._delivered: dict[Partition, int] = {}  # the next offset after everything delivered, per partition

    def delivered(self, batch: InFlightBatch) -> None:
        """Its batch was acknowledged, and every batch before it: its offsets may be committed."""
        self._to_commit.update(batch.next_offsets)
        self._delivered.update(batch.next_offsets)

    def take_commit(self) -> dict[Partition, int]:
        """The offsets to commit now (empty when nothing new was delivered); they count as sent."""
        offsets, self._to_commit = self._to_commit, {}
        return offsets

    def take_final_commit(self) -> dict[Partition, int]:
        """Every delivered position, to commit and wait for at stop: a background commit sent just
        before may have failed unseen, so nothing is taken as committed until this one is answered."""
        self._to_commit = {}
        return dict(self._delivered)

    def commit_failed(self) -> None:
        """A commit failed: the next one repeats every delivered position, not only newer ones."""
        for partition, offset in self._delivered.items():
            self._to_commit.setdefault(partition, offset)

    def forget(self, partitions: set[Partition]) -> None:
        """Partitions revoked: never committed again by this member, should a later commit fail."""
        for partition in partitions:
            self._delivered.pop(partition, None)
            self._to_commit.pop(partition, None)

    @property
    def pending(self) -> int:
        """Partitions with delivered offsets not yet committed."""
        return len(self._to_commit)

    @property
    def positions(self) -> dict[Partition, int]:
        """The next offset after everything delivered, per partition."""
        return self._delivered


def lags(highwaters: dict[Partition, Optional[int]], positions: dict[Partition, int]) -> Optional[dict[Partition, int]]:
    """Records behind each partition's high watermark, from the next offset after what was delivered;
    None while any high watermark or position is unknown (a partition just assigned)."""
    behind = {}
    for partition, highwater in highwaters.items():
        position = positions.get(partition)
        if highwater is None or position is None:
            return None
        behind[partition] = max(highwater - position, 0)
    return behind
