"""The delivery core: how one batch's records are produced, answered, rerouted and reported, whatever the client.

Written once for every engine (and the in-memory fake). An engine supplies only:
- how to produce a record: `produce(topic, key, value, headers, partition, position)` queues it and
  returns None, its answer to come later; or returns the `ClientError` at once when the client
  refused it on the spot. `partition` None lets the client choose; `position` is the record's place
  in the batch, for the engine to hand back with the answer. It may block (that is the
  backpressure), never longer than the client's own bound.
- how it learns a record was acknowledged: it calls `BatchDelivery.answered(position, error)` once
  per produced record, error None when the output cluster acknowledged it (acks=all).
- how to classify a client error: `ClientError(kind, name, detail)`, kind one of `ErrorKind`.

The policy, here only:
- Routing: a processed login goes to the output topic; a rejection goes to the dead-letter topic
  as its original bytes and why (login_pipeline.routing.dead_letter).
- Size: a record that cannot fit its topic is never produced; its refused form goes instead.
- Rerouting: a record refused for what it is (too large, invalid) is produced again once, in its
  refused form (routing.refused_dead_letter: no value, the key when small), on the dead-letter
  topic, and listed in the report as `Rerouted` at its position. A refusal of that form fails the batch.
- Failures: the batch fails when any record is not acknowledged; the first failure's text is kept;
  a refusal of the pipeline itself (authorization, authentication) marks it refused, and that
  text wins.
- The report (`BatchReport`) is final once every produced record was answered (`all_answered`).
"""

from __future__ import annotations

import bisect
import enum
import itertools
from typing import NamedTuple, Optional, Protocol

from login_pipeline.client import BatchReport, HandOver, Rerouted
from login_pipeline.results import RECORD_REJECTED, RECORD_TOO_LARGE, Rejection
from login_pipeline.routing import (
    SOURCE_OFFSET,
    Headers,
    dead_letter,
    fits,
    partition_headers,
    refused_dead_letter,
    source_headers,
)

DETAIL_CHARS = 200  # a client error's text is cut to this in a report
_CLIENT_PARTITIONS = itertools.repeat(None)  # no partition given: the client partitions each record


class ErrorKind(enum.Enum):
    RETRIABLE = "retriable"  # the batch fails and is produced again
    TOO_LARGE = "too large"  # refused for the record's size: rerouted
    INVALID = "invalid"  # refused as an invalid record: rerouted
    REFUSED_US = "refused us"  # the cluster refuses the pipeline itself: no retry can succeed

    @property
    def refuses_the_record(self) -> bool:
        """Refused for what the record is (too large, invalid): it is rerouted, never retried as it is."""
        return self is ErrorKind.TOO_LARGE or self is ErrorKind.INVALID


class ClientError(NamedTuple):
    kind: ErrorKind
    name: str  # the client's name for it, as it appears in reports and dead-letter headers
    detail: str = ""


class Route(NamedTuple):
    """Where records go, and the largest record batch each topic takes (bytes)."""

    output_topic: str
    dlq_topic: str
    output_limit: int
    dlq_limit: int


class KeptRecord(NamedTuple):
    """A record handed over, as kept to reroute it: its input key and value, why it was a dead letter
    (None for a login), and its source headers."""

    key: Optional[bytes]
    value: Optional[bytes]
    rejection: Optional[Rejection]
    source: Headers


class Produce(Protocol):
    def __call__(
        self, topic: str, key: Optional[bytes], value: bytes, headers: Headers, partition: Optional[int], position: int
    ) -> Optional[ClientError]: ...


class BatchDelivery:
    """One batch: its records produced, their answers, what was rerouted, and its report."""

    __slots__ = (
        "_report",
        "pending",
        "records",
        "rerouted",
        "_route",
        "_produce",
        "_handovers",
        "_starts",
        "_failures",
        "_broken",
    )

    def __init__(self, route: Route, produce: Produce) -> None:
        self._route = route
        self._produce = produce
        self.pending = 0  # records produced whose answer has not come
        self.records = 0  # records handed over
        self.rerouted: list[Rerouted] = []
        self._handovers: list[HandOver] = []
        self._starts: list[int] = []  # the position of each hand-over's first record
        self._failures: list[ClientError] = []  # answers that were not acknowledgements
        self._broken: Optional[str] = None  # a failure not tied to one record
        self._report: Optional[BatchReport] = None

    def send(self, records: HandOver, partitions: Optional[list[int]] = None) -> None:
        """Produce records of one input partition, in order. `partitions`: the output partition of
        each login, by index (None: the client partitions)."""
        route, produce = self._route, self._produce
        output_topic, output_limit = route.output_topic, route.output_limit
        prefix = partition_headers(records.topic, records.partition)
        rejections = records.rejections
        self._handovers.append(records)
        self._starts.append(self.records)
        position = self.records
        self.records += len(records.offsets)
        columns = zip(records.offsets, records.keys, records.values, partitions or _CLIENT_PARTITIONS)
        for index, (offset, key, value, partition) in enumerate(columns):
            source = [*prefix, (SOURCE_OFFSET, str(offset).encode())]
            rejection = rejections.get(index) if rejections else None
            if rejection is None:
                topic, limit, out_key, out_value, headers = output_topic, output_limit, key, value, source
            else:
                topic, limit, partition = route.dlq_topic, route.dlq_limit, None
                out_key, out_value, headers = dead_letter(key, value, rejection, source)
            if not fits(limit, out_key, out_value, headers):  # type: ignore[arg-type]  # a login's value is never null
                kept = KeptRecord(key, value, rejection, source)
                self._reroute(position, kept, RECORD_TOO_LARGE, "MSG_SIZE_TOO_LARGE")
            else:
                self.pending += 1
                error = produce(topic, out_key, out_value, headers, partition, position)  # type: ignore[arg-type]
                if error is not None:
                    self.answered(position, error)
            position += 1

    def answered(self, position: Optional[int], error: Optional[ClientError]) -> None:
        """The output cluster's answer for the record produced at `position` (error None: acknowledged).

        `position` None: the engine cannot tell which record it was; a refused record that cannot be
        placed is not rerouted, and fails the batch (which is produced again).
        """
        self.pending -= 1
        if error is None:
            return
        if error.kind.refuses_the_record and position is not None and not self.rerouted_at(position):
            reason = RECORD_TOO_LARGE if error.kind is ErrorKind.TOO_LARGE else RECORD_REJECTED
            self._reroute(position, self.kept(position), reason, error.name)
        else:
            self._failures.append(error)

    def rerouted_at(self, position: int) -> bool:
        """Whether the record at `position` was rerouted already (its refused form is what was answered)."""
        return any(rerouted.position == position for rerouted in self.rerouted)

    def acknowledged(self) -> None:
        """A record was acknowledged: `answered(position, None)`, for an engine that learns of an
        acknowledgement without knowing which record it was (it needs the position only of a failure)."""
        self.pending -= 1

    def fail(self, reason: str) -> None:
        """The batch fails for a reason not tied to one record (the client broke while producing)."""
        self._broken = self._broken or reason

    def kept(self, position: int) -> KeptRecord:
        """The record handed over at `position`."""
        which = bisect.bisect_right(self._starts, position) - 1
        records = self._handovers[which]
        index = position - self._starts[which]
        return KeptRecord(
            records.keys[index],
            records.values[index],
            records.rejections.get(index),
            source_headers(records.topic, records.partition, records.offsets[index]),
        )

    @property
    def all_answered(self) -> bool:
        """Every record produced has its answer: the report is final."""
        return self.pending == 0

    def report(self, producer_restarts: int = 0) -> BatchReport:
        """The batch's report, once every record was answered. Final: the batch then lets go of its
        records and of `produce` (a bound method of the engine's own per-batch state, which refers back
        to this batch: left in place, each batch would wait for the cyclic collector, and a 200,000
        record backlog peaked at 441 MB instead of 234)."""
        if self._report is None:
            self._report = self._reported(producer_restarts)
            self._produce = _reported_already
            self._handovers, self._starts = [], []
        return self._report

    def _reported(self, producer_restarts: int) -> BatchReport:
        failures = self._failures
        refusal = next((error for error in failures if error.kind is ErrorKind.REFUSED_US), None)
        if refusal is None and self._broken is not None:
            return BatchReport(self._broken, producer_restarts=producer_restarts)
        if not failures:
            return BatchReport(None, tuple(self.rerouted), producer_restarts=producer_restarts)
        shown = refusal or failures[0]
        return BatchReport(
            f"{len(failures)} of {self.records} records were not acknowledged: "
            f"{shown.name}{': ' + shown.detail[:DETAIL_CHARS] if shown.detail else ''}",
            refused=shown.kind is ErrorKind.REFUSED_US,
            producer_restarts=producer_restarts,
        )

    def _reroute(self, position: int, record: KeptRecord, reason: str, error_name: str) -> None:
        key, value, headers = refused_dead_letter(
            record.key, record.value, record.rejection, record.source, reason, error_name
        )
        self.rerouted.append(Rerouted(position, reason))
        self.pending += 1
        error = self._produce(self._route.dlq_topic, key, value, headers, None, position)
        if error is not None:
            self.answered(position, error)


def _reported_already(
    topic: str, key: Optional[bytes], value: bytes, headers: Headers, partition: Optional[int], position: int
) -> Optional[ClientError]:
    raise RuntimeError("a reported batch produces nothing more")


def route_of(output_topic: str, dlq_topic: str, size_limits: dict[str, int]) -> Route:
    return Route(output_topic, dlq_topic, size_limits[output_topic], size_limits[dlq_topic])
