"""In-memory fakes of login_pipeline.client's Input and Output, for specifying the run loop in milliseconds.

They keep the contracts of the real engines (records in offset order, the revoke handler called
only inside poll or close, reports in the order batches were closed) and record what happened, so
tests can assert on commits, deliveries and their order. Failures are scheduled on purpose.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from login_pipeline.client import (
    AssignHandler,
    BatchReport,
    CommitAnswerHandler,
    FeedRecord,
    HandOver,
    InputRefused,
    InputUnavailable,
    OutputGone,
    Partition,
    Polled,
    RevokeHandler,
)
from login_pipeline.delivery import BatchDelivery, ClientError, ErrorKind, Route, route_of


@dataclass
class Delivered:
    """A record the fake output acknowledged, as the delivery core produced it."""

    topic: str  # "output" or "dlq"
    source: tuple[int, int]  # input (partition, offset)
    key: Optional[bytes]
    value: Optional[bytes]
    reason: Optional[str]  # dlq.reason, for dead letters
    headers: dict[str, bytes] = field(default_factory=dict)


OUTPUT_TOPIC, DLQ_TOPIC = "processed-logins", "user-login-dlq"
TIMED_OUT = ClientError(ErrorKind.RETRIABLE, "KafkaTimeoutError", "(fake)")
NOT_AUTHORIZED = ClientError(ErrorKind.REFUSED_US, "TOPIC_AUTHORIZATION_FAILED", "(fake)")
TOO_LARGE = ClientError(ErrorKind.TOO_LARGE, "MSG_SIZE_TOO_LARGE", "(fake)")


class _FakeBatch:
    """One batch: the delivery core, and what it produced, in order, to be answered all at once."""

    def __init__(self, route: Route) -> None:
        self.produced: list[tuple[str, Optional[bytes], bytes, dict[str, bytes], int]] = []
        self.delivery = BatchDelivery(route, self._produce)

    def _produce(self, topic, key, value, headers, partition, position) -> Optional[ClientError]:
        self.produced.append((topic, key, value, dict(headers), position))
        return None


@dataclass
class FakeOutput:
    """Output over the delivery core: acknowledges batches in order; fails, holds or dies on request."""

    size_limits: dict[str, int] = field(default_factory=lambda: {OUTPUT_TOPIC: 1_048_576, DLQ_TOPIC: 1_048_576})
    delivered: list[Delivered] = field(default_factory=list)
    acknowledged: dict[int, int] = field(default_factory=dict)  # input partition -> next offset acknowledged
    fail_batches: set[int] = field(default_factory=set)  # ordinals (from 0) of batches to report as failed
    refuse_batches: set[int] = field(default_factory=set)  # ... as refused for good (a missing ACL)
    restarts_before: dict[int, int] = field(default_factory=dict)  # batch ordinal -> producers replaced before it
    reroute_offsets: set[tuple[int, int]] = field(default_factory=set)  # refuse these, as too large
    refuse_above: Optional[int] = None  # refuse as too large any record of more bytes (as max.message.bytes)
    hold: bool = False  # acknowledge nothing: as a slow or absent output cluster
    dead: bool = False
    closed: bool = False
    _open: Optional[_FakeBatch] = None
    _closed: deque = field(default_factory=deque)
    _batches_closed: int = 0

    def send(self, records: HandOver) -> None:
        if self.dead:
            raise OutputGone("the output process is gone (fake)")
        if self._open is None:
            self._open = _FakeBatch(route_of(OUTPUT_TOPIC, DLQ_TOPIC, self.size_limits))
        self._open.delivery.send(records)

    def end_batch(self) -> None:
        if self.dead:
            raise OutputGone("the output process is gone (fake)")
        batch = self._open or _FakeBatch(route_of(OUTPUT_TOPIC, DLQ_TOPIC, self.size_limits))
        self._closed.append((self._batches_closed, batch))
        self._batches_closed += 1
        self._open = None

    def acknowledgement(self, timeout_s: Optional[float] = None) -> Optional[BatchReport]:
        if self.dead:
            raise OutputGone("the output process exited (fake)")
        if self.hold or not self._closed:
            if timeout_s is None:
                raise OutputGone("the output process did not answer (fake)")
            return None
        ordinal, batch = self._closed.popleft()
        answered = 0
        while answered < len(batch.produced):  # a rerouted record's refused form joins the end
            topic, key, value, headers, position = batch.produced[answered]
            answered += 1
            source = (int(headers["source.partition"]), int(headers["source.offset"]))
            if ordinal in self.refuse_batches:
                batch.delivery.answered(position, NOT_AUTHORIZED)
            elif ordinal in self.fail_batches:
                batch.delivery.answered(position, TIMED_OUT)
            elif self._too_large(source, key, value, headers):
                batch.delivery.answered(position, TOO_LARGE)
            else:
                batch.delivery.answered(position, None)
                reason = headers.get("dlq.reason")
                self.delivered.append(
                    Delivered(
                        "output" if topic == OUTPUT_TOPIC else "dlq",
                        source,
                        key,
                        value,
                        reason.decode() if reason is not None else None,
                        headers,
                    )
                )
                self.acknowledged[source[0]] = max(self.acknowledged.get(source[0], 0), source[1] + 1)
        return batch.delivery.report(self.restarts_before.get(ordinal, 0))

    def _too_large(self, source: tuple[int, int], key: Optional[bytes], value: bytes, headers: dict) -> bool:
        if self.refuse_above is not None and len(key or b"") + len(value) > self.refuse_above:
            return True
        return source in self.reroute_offsets and "dlq.value_bytes" not in headers  # its refused form is taken

    def close(self) -> None:
        self.closed = True

    def alive(self) -> bool:
        return not self.dead


@dataclass
class Commit:
    offsets: dict[Partition, int]
    acknowledged_then: dict[int, int]  # what the output had acknowledged when the commit was made
    waited: bool


class FakeInput:
    """Input: partitions held in memory, a group of one member, commits recorded with what was acknowledged."""

    def __init__(
        self,
        output: FakeOutput,
        records: dict[int, list[tuple[Optional[bytes], Optional[bytes]]]],
        batch_size: int = 3,
        topic: str = "user-login",
    ) -> None:
        self._output = output
        self._log = {Partition(topic, p): list(values) for p, values in records.items()}
        self._assigned: set[Partition] = set(self._log)
        self._positions = {partition: 0 for partition in self._log}
        self.batch_size = batch_size
        self.committed: dict[Partition, int] = {}
        self.commits: list[Commit] = []
        self.polls = 0
        self.closed = False
        # Scheduled events, each taken once: (poll number, what)
        self.revoke_at: set[int] = set()
        self.unavailable_at: set[int] = set()
        self.refuse_at: set[int] = set()
        self.fail_commits = 0  # how many of the next commits fail
        self.stop_when_drained = None  # a StopRequest, requested once every record was polled and settled
        self._on_revoke: Optional[RevokeHandler] = None
        self._on_commit_answer: Optional[CommitAnswerHandler] = None
        self._answers: list[Optional[str]] = []
        self._on_assign: Optional[AssignHandler] = None

    def subscribe(
        self, on_revoke: RevokeHandler, on_commit_answer: CommitAnswerHandler, on_assign: AssignHandler
    ) -> None:
        self._on_revoke, self._on_commit_answer, self._on_assign = on_revoke, on_commit_answer, on_assign

    def poll(self, timeout_s: float) -> list[Polled]:
        self.polls += 1
        if self.polls == 1:
            self._on_assign(set(self._assigned))
        for answer in self._answers:
            self._on_commit_answer(answer)
        self._answers.clear()
        if self.polls in self.unavailable_at:
            raise InputUnavailable("NodeNotReadyError (fake)")
        if self.polls in self.refuse_at:
            raise InputRefused("TopicAuthorizationFailedError (fake)")
        if self.polls in self.revoke_at:
            self._rebalance()
        polled, budget = [], self.batch_size
        for partition in sorted(self._assigned):
            start = self._positions[partition]
            taken = self._log[partition][start : start + budget]
            if taken:
                budget -= len(taken)
                self._positions[partition] = start + len(taken)
                polled.append(
                    Polled(
                        partition,
                        list(range(start, start + len(taken))),
                        [key for key, _ in taken],
                        [value for _, value in taken],
                    )
                )
        if not polled and self.stop_when_drained is not None and self._output.acknowledged == self.ends():
            self.stop_when_drained.request()
        return polled

    def _rebalance(self) -> None:
        """Revoke everything and get it back, as an eager rebalance does; positions restart from commits."""
        self._commit(self._on_revoke(set(self._assigned)), waited=True)
        self._positions = {partition: self.committed.get(partition, 0) for partition in self._log}
        self._on_assign(set(self._assigned))

    def seek(self, partition: Partition, offset: int) -> None:
        assert partition in self._assigned
        self._positions[partition] = offset

    def commit_in_background(self, offsets: dict[Partition, int]) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            self._answers.append("RequestTimedOutError (fake)")
            return
        self._commit(offsets, waited=False)
        self._answers.append(None)

    def commit(self, offsets: dict[Partition, int], timeout_s: float) -> bool:
        if self.fail_commits:
            self.fail_commits -= 1
            return False
        self._commit(offsets, waited=True)
        return True

    def _commit(self, offsets: dict[Partition, int], waited: bool) -> None:
        if not offsets:
            return
        self.commits.append(Commit(dict(offsets), dict(self._output.acknowledged), waited))
        self.committed.update(offsets)

    def assignment(self) -> set[Partition]:
        return set(self._assigned)

    def lag(self, positions: dict[Partition, int]) -> Optional[dict[Partition, int]]:
        return {p: len(self._log[p]) - positions.get(p, 0) for p in self._assigned}

    def close(self) -> None:
        self._commit(self._on_revoke(set(self._assigned)), waited=True)
        self._assigned = set()
        self.closed = True

    def ends(self) -> dict[int, int]:
        return {partition.partition: len(values) for partition, values in self._log.items() if values}


class FakePublisher:
    """Publisher: records kept in memory, each with how many input commits had been made before it
    was published (so a test can tell a window's partial went out before the revoke's commit)."""

    def __init__(self, source: Optional[FakeInput] = None) -> None:
        self._source = source
        self.published: list[tuple[str, bytes, dict, int]] = []  # topic, key, value as JSON, commits before
        self.flushes = 0
        self.failed = 0
        self.closed = False

    def publish(self, topic: str, key: bytes, value: bytes) -> bool:
        commits = len(self._source.commits) if self._source is not None else 0
        self.published.append((topic, key, json.loads(value), commits))
        return True

    def flush(self, timeout_s: float) -> int:
        self.flushes += 1
        return 0

    def close(self) -> None:
        self.closed = True

    def values(self, topic: str) -> list[dict]:
        return [value for published_topic, _, value, _ in self.published if published_topic == topic]


def fake_publisher() -> FakePublisher:
    """A publisher factory a child process can import (login_pipeline.live_process)."""
    return FakePublisher()


def failing_publisher() -> FakePublisher:
    raise ConnectionError("no cluster here")


class FakeFeed:
    """A Feed that returns its records once, then nothing (login_pipeline.client.Feed)."""

    def __init__(self, records: list[FeedRecord]) -> None:
        self._records = records

    def poll(self, timeout_s: float) -> list[FeedRecord]:
        records, self._records = self._records, []
        if not records:
            time.sleep(min(timeout_s, 0.05))
        return records

    def close(self) -> None:
        pass


def feed_of(records: list[FeedRecord], since_s: float) -> FakeFeed:
    """A feed factory a child process can import: partial(feed_of, records)."""
    return FakeFeed(records)
