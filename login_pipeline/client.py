"""The small interfaces the run loop talks to, and the typed records that cross them.

An engine (login_pipeline.engines) implements both for one Kafka client library, and the two side
channels of the live insights (`Publisher`, `Feed`); the run loop (login_pipeline.run_loop) knows
nothing else of Kafka. Every method of Input, Output and Publisher is called from the run loop's
thread, and the rebalance handler only from inside `Input.poll` or `Input.close`, so the run loop
never races its own callbacks.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Protocol

from login_pipeline.results import Rejection


class Partition(NamedTuple):
    topic: str
    partition: int


class Polled(NamedTuple):
    """Records of one input partition from one poll, in offset order, as columns."""

    partition: Partition
    offsets: list[int]
    keys: list[Optional[bytes]]
    values: list[Optional[bytes]]  # None: a null value (a tombstone)


class HandOver(NamedTuple):
    """Records of one input partition, in offset order, handed to the output in one call.

    Columns rather than a record object each: pickling 250 small NamedTuples cost 1.0 us a record
    against 0.08 us for plain lists (measured with timeit), on the run loop's hot path.
    """

    topic: str
    partition: int
    offsets: list[int]
    keys: list[Optional[bytes]]
    values: list[Optional[bytes]]
    rejections: dict[int, Rejection]  # by index: these go to the dead-letter topic, the rest are processed logins

    @classmethod
    def of(cls, partition: Partition) -> HandOver:
        return cls(partition.topic, partition.partition, [], [], [], {})

    def add(
        self, offset: int, key: Optional[bytes], value: Optional[bytes], rejection: Optional[Rejection] = None
    ) -> None:
        if rejection is not None:
            self.rejections[len(self.offsets)] = rejection
        self.offsets.append(offset)
        self.keys.append(key)
        self.values.append(value)


class Rerouted(NamedTuple):
    """A record of the batch that the output cluster refused, and that went to the dead-letter topic instead."""

    position: int  # its index among the batch's records, in the order they were handed over
    reason: str  # RECORD_TOO_LARGE or RECORD_REJECTED


class BatchReport(NamedTuple):
    failure: Optional[str]  # None: every record of the batch was acknowledged
    rerouted: tuple[Rerouted, ...] = ()
    # The output cluster refused us, not the record (authorization, authentication): no retry can succeed.
    refused: bool = False
    # Producers the output replaced after a fatal error since its previous report (an operator's signal).
    producer_restarts: int = 0


# Called before partitions are revoked, with them; returns the offsets (next to read) to commit first.
RevokeHandler = Callable[[set[Partition]], dict[Partition, int]]
# Called, from inside a later poll, when a commit sent without waiting was answered: with None when
# the group took it, else with the error's name.
CommitAnswerHandler = Callable[[Optional[str]], None]
# Called when the member has joined the group, with the partitions it now holds (maybe none).
AssignHandler = Callable[[set[Partition]], None]


class InputUnavailable(Exception):
    """The input cluster cannot be reached just now; polling again later is safe."""


class InputRefused(Exception):
    """The input cluster refused the consumer for good (authorization, a fenced member...); str() says why."""


class OutputGone(RuntimeError):
    """The output side stopped working (its process died, or stopped answering); str() says which."""


class StartupError(Exception):
    """The clusters or topics are not usable; str() is the one line shown to the user."""


class Input(Protocol):
    """The input cluster: a consumer in a group, committing only what it is told to.

    - `subscribe(on_revoke, on_commit_answer, on_assign)` joins the group. Before any partition is
      revoked (inside `poll` or `close`), `on_revoke` is called and the offsets it returns are
      committed before the partitions go, so nothing acknowledged is left uncommitted. After each
      join, `on_assign` is called (inside `poll`) with what the member holds.
    - `poll(timeout_s)` returns what arrived, at most the configured batch size in all, one
      `Polled` per partition. It blocks at most `timeout_s` (plus a rebalance's settling). It
      raises InputUnavailable while the cluster is away and InputRefused when it refuses us.
    - `seek(partition, offset)`: the next poll of that assigned partition starts at `offset`.
    - `commit_in_background(offsets)` sends a commit without waiting; its answer goes to
      `on_commit_answer` from inside a later poll. Commits are answered in order.
    - `commit(offsets, timeout_s)` commits and waits; False when it failed.
    - `assignment()`: the partitions held now. `lag(positions)`: records behind the high
      watermark of each assigned partition, or None when any is unknown.
    - `close()` leaves the group (revoking, so `on_revoke` runs); it commits nothing else.
    Nothing is ever auto-committed.
    """

    def subscribe(
        self, on_revoke: RevokeHandler, on_commit_answer: CommitAnswerHandler, on_assign: AssignHandler
    ) -> None: ...
    def poll(self, timeout_s: float) -> list[Polled]: ...
    def seek(self, partition: Partition, offset: int) -> None: ...
    def commit_in_background(self, offsets: dict[Partition, int]) -> None: ...
    def commit(self, offsets: dict[Partition, int], timeout_s: float) -> bool: ...
    def assignment(self) -> set[Partition]: ...
    def lag(self, positions: dict[Partition, int]) -> Optional[dict[Partition, int]]: ...
    def close(self) -> None: ...


class Output(Protocol):
    """The output cluster: records in, acknowledgements of whole batches out, in order.

    - `size_limits`: the largest record batch each output topic takes, in bytes.
    - `send(records)` produces records of one input partition in the order given, after those of
      earlier calls; it may block while the output is full (that is the backpressure).
    - `end_batch()` closes a batch: everything sent since the last `end_batch`.
    - `acknowledgement(timeout_s)` returns the report of the oldest batch not yet reported, in the
      order they were closed: no failure only when every record was acknowledged (acks=all,
      idempotent). With `timeout_s` None it waits up to its own acknowledgement timeout and raises
      OutputGone past it; with a number it returns None when nothing came in that time.
    - Every record is routed (login_pipeline.delivery, the same for every engine and the test
      fake): a dead letter with a null value goes with an empty value and the
      header dlq.null_value=true; a record the cluster refuses for what it is (too large, invalid)
      goes to the dead-letter topic without its value and is listed in the report as rerouted (at
      the latest when its failed batch is produced again, should the client not say which record
      it was);
      transient failures fail the batch, for the run loop to retry; a refusal of the pipeline
      itself (a missing ACL, a rejected password) fails it as `refused`, and the run loop stops.
    - `close()` stops producing; what was not acknowledged is not reported.
    - `alive()`: False once the output can no longer be used (its process died); never blocks, may
      be called from any thread.
    OutputGone from any call means the output can no longer be used.
    """

    size_limits: dict[str, int]

    def send(self, records: HandOver) -> None: ...
    def end_batch(self) -> None: ...
    def acknowledgement(self, timeout_s: Optional[float] = None) -> Optional[BatchReport]: ...
    def close(self) -> None: ...
    def alive(self) -> bool: ...


class FeedRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    value: Optional[bytes]


class Publisher(Protocol):
    """Records outside the run loop's batches (closed windows, alerts) to topics of the output cluster.

    - `publish(topic, key, value)` queues one record and returns at once (it blocks at most
      PUBLISH_BLOCK_S while the cluster is unknown); False when it could not even be queued.
    - `flush(timeout_s)` waits at most `timeout_s` for everything queued; returns how many records
      are still undelivered (0: all acknowledged).
    - `failed`: records the cluster did not take, so far (each was also logged, without its value).
    - `close()` stops, waiting at most a few seconds.
    These records are not tied to input offsets: a window or alert that fails to publish is
    counted and logged, and the run loop goes on.
    """

    failed: int

    def publish(self, topic: str, key: bytes, value: bytes) -> bool: ...
    def flush(self, timeout_s: float) -> int: ...
    def close(self) -> None: ...


class Feed(Protocol):
    """Reads topics of the output cluster from a point in time on, outside any consumer group.

    - `poll(timeout_s)` returns what arrived, blocking at most `timeout_s`; while the cluster or a
      topic is away it returns nothing (and tries again at later polls) rather than raising.
    - `close()`. Nothing is ever committed. Called from one thread of its own, never the run loop's.
    """

    def poll(self, timeout_s: float) -> list[FeedRecord]: ...
    def close(self) -> None: ...
