"""The run loop: poll → process → hand over → settle → commit, over the interfaces of login_pipeline.client.

It takes its Input, Output, Checkpoint and `process`, and tells observers what happened
(login_pipeline.events); it knows nothing of metrics, insights, the terminal or HTTP.

Contract of `RunLoop.run`:
- Every input message yields exactly one record: the processed login on the output topic, or the
  original key and value bytes on the dead-letter topic. Both carry source.topic, source.partition
  and source.offset headers, so downstream can deduplicate on them.
- Every record Kafka can deliver is routed: a null value, any key, any headers, any size. One the
  output cluster refuses for what it is goes to the dead-letter topic in a form that fits
  (login_pipeline.routing); the partition never stalls on a record.
- Ordering: records are produced in input-offset order per input partition, and the output topic
  is keyed by user id, so one user's logins from one input partition keep their order. After an
  output failure the failed batch and the ones behind it are produced again, after what went
  before, so a retried record can appear twice, the second time after later ones.
- Commits: the Checkpoint decides them (login_pipeline.checkpoint); the loop tells it of each
  batch acknowledged (acks=all, idempotent producer) in order, and asks it to commit at the end of
  each turn (what was delivered, or a failed commit again), before partitions are revoked, and at
  stop. So a crash can repeat the uncommitted batches (the ones in flight, the one being
  processed, and one whose commit was unanswered), never skip them.
- Pipelining: up to `in_flight_batches` batches stay in flight while the next is processed, so
  processing overlaps producing and the output cluster's acknowledgement.
- Rebalances: partitions are only revoked inside poll or close; before they go, the revoke
  handler waits up to `revoke_settle_s` (a quarter of the session timeout, so the member keeps its
  place in the group) for the batches in flight and commits what was acknowledged. Batches not
  acknowledged by then are abandoned: never committed, so whoever owns the partitions next
  delivers them again (duplicates, never loss).
- Output failures: a batch whose delivery fails is never committed; the input rewinds to the
  first offsets still in flight and retries with capped exponential backoff until the output
  cluster is back. A batch the output cluster refuses to take from us (a missing ACL) stops the
  run at once, exit 1, nothing committed past the last acknowledged batch.
- Observers hear of each step (login_pipeline.events): a delivered batch once, however often it
  was retried; before the revoke's commit and before the final commit they may publish (the live
  insights' open windows), within their own bounded waits. They never hold back a commit.
- Stop: once `stop.requested`, the loop finishes the batch in hand, waits for everything in
  flight, commits every delivered position and waits for the answer, and leaves the group: exit 0
  when the final commit succeeded, 1 (with one line) when it did not.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, NamedTuple, Optional, Protocol

from login_pipeline.acknowledgements import Acknowledgements, NotAcknowledged
from login_pipeline.checkpoint import Checkpoint
from login_pipeline.client import (
    Input,
    InputRefused,
    InputUnavailable,
    Output,
    OutputGone,
    Partition,
    Polled,
)
from login_pipeline.events import (
    Assigned,
    HandedOver,
    Observer,
    Revoking,
    SettledBeforeRevoke,
    Stopped,
    Stopping,
    TurnEnded,
    TurnStarted,
)
from login_pipeline.offsets import InFlightBatch
from login_pipeline.processing import BatchProcessing, Process

log = logging.getLogger(__name__)


class LoopSettings(NamedTuple):
    output_topic: str  # whose size limit a processed login must fit
    revoke_settle_s: float  # the revoke handler's wait for what is in flight (inside the heartbeat's budget)
    poll_timeout_s: float = 0.5
    max_backoff_s: float = 30.0
    # Batches handed over but not yet acknowledged while the next is processed. With one, the run
    # loop still waited a quarter of its time for acknowledgements (py-spy); two raised
    # processor/passthrough from 0.74-0.79 to 0.87 (median of 5 alternating runs). Each one adds a
    # batch a crash can repeat.
    in_flight_batches: int = 2
    handover_records: int = 250  # records per hand-over to the output: pipelined, yet cheap to pickle
    final_commit_timeout_s: float = 30.0


class StopSignal(Protocol):
    @property
    def requested(self) -> bool: ...
    def sleep(self, seconds: float) -> None: ...


class RunLoop:
    def __init__(
        self,
        settings: LoopSettings,
        process: Process,
        consumer: Input,
        output: Output,
        checkpoint: Checkpoint,
        observer: Observer,
        stop: StopSignal,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._process = process
        self._input = consumer
        self._output = output
        self._checkpoint = checkpoint
        self._observer = observer
        self._stop = stop
        self._clock = clock
        self._monotonic = monotonic
        self._acknowledgements = Acknowledgements(consumer, output, checkpoint, observer, monotonic)
        self.in_flight = self._acknowledgements.in_flight
        consumer.subscribe(self._settle_before_revoke, checkpoint.commit_answered, self._assigned)

    def run(self) -> int:
        """Process until stopped; returns the exit code (0: stopped cleanly with everything committed)."""
        exit_code = 0
        try:
            failures = self._loop()
            try:
                self._acknowledgements.settle(keep=0)
            except NotAcknowledged:
                failures += 1
            if failures:
                log.error("stopped with an undelivered batch; it was not committed and will be processed on restart")
                exit_code = 1
        except OutputGone as error:
            self.in_flight.drop_all()
            log.error("%s; nothing was committed past the last acknowledged batch", error)
            exit_code = 1
        except InputRefused as error:
            log.error(
                "the input cluster refused the consumer (%s); nothing was committed past the last acknowledged batch",
                error,
            )
            exit_code = 1
        finally:
            self._observer.stopping(Stopping())
            if not self._checkpoint.final(self._settings.final_commit_timeout_s):
                log.error(
                    "the final commit failed; a restart repeats what %d partitions had uncommitted",
                    self._checkpoint.pending,
                )
                exit_code = 1
            self._observer.stopped(Stopped(self._lags()))
            self._input.close()
            self._output.close()
        return exit_code

    def _loop(self) -> int:
        """Poll, hand over, settle, commit until stopped; returns how many deliveries in a row failed."""
        settings, observer = self._settings, self._observer
        failures = 0
        while not self._stop.requested:
            observer.turn_started(TurnStarted(self._monotonic()))
            try:
                polled = self._input.poll(settings.poll_timeout_s)
            except InputUnavailable as error:
                # The input cluster is away (found by stopping it under load): wait for it, skip nothing.
                log.warning("the input cluster is unavailable (%s); polling again in 1 s", error)
                self._stop.sleep(1.0)
                continue
            if polled:
                self.in_flight.handed_over(self._hand_over(polled))
            # The newest batches stay in flight while the next one is processed; with nothing new, settle all.
            try:
                if self._acknowledgements.settle(keep=settings.in_flight_batches if polled else 0):
                    failures = 0
                # Every turn, not only after a delivery: a commit that failed as the input went quiet
                # is repeated while nothing new arrives (the Checkpoint sends nothing when nothing is due).
                self._checkpoint.commit()
            except NotAcknowledged:
                failures += 1
                backoff = min(settings.max_backoff_s, 0.5 * 2**failures)
                log.error(
                    "the output cluster did not acknowledge a batch; nothing committed past it, "
                    "retrying it in %.1f s (attempt %d)",
                    backoff,
                    failures + 1,
                )
                self._stop.sleep(backoff)
            observer.turn_ended(TurnEnded(len(self.in_flight), len(self._input.assignment()), self._lags()))
        return failures

    def _hand_over(self, polled: list[Polled]) -> InFlightBatch:
        """Process every record polled and hand the results to the output."""
        began = self._monotonic()
        processed_at = self._clock()
        processing = BatchProcessing(
            polled,
            self._process,
            processed_at,
            self._output.size_limits[self._settings.output_topic],
            self._settings.handover_records,
        )
        send = self._output.send
        for records in processing:
            send(records)
        self._output.end_batch()
        handed_at = self._monotonic()
        results, dead_letters = processing.results, processing.dead_letters
        self._observer.handed_over(
            HandedOver(len(results), len(results) - dead_letters, dead_letters, handed_at - began)
        )
        return InFlightBatch(
            {part.partition: part.offsets[0] for part in polled},
            {part.partition: part.offsets[-1] + 1 for part in polled},
            results,
            handed_at=handed_at,
            processed_at=processed_at,
            spans=[(part.partition.partition, len(part.offsets)) for part in polled],
        )

    def _assigned(self, partitions: set[Partition]) -> None:
        self._observer.assigned(Assigned(frozenset(partitions)))

    def _settle_before_revoke(self, revoked: set[Partition]) -> dict[Partition, int]:
        """Before partitions go: settle what is in flight (bounded), return what was delivered to commit."""
        self._observer.revoking(Revoking(frozenset(revoked)))
        try:
            self._acknowledgements.settle(keep=0, within=self._settings.revoke_settle_s)
        except NotAcknowledged:
            pass  # rewound and left uncommitted; whoever owns the partitions next processes it again
        except OutputGone:
            self.in_flight.drop_all()  # the run loop meets the same error at its next hand-over and stops
        self._observer.settled_before_revoke(SettledBeforeRevoke(frozenset(revoked)))
        return self._checkpoint.before_revoke(revoked)

    def _lags(self) -> Optional[dict[Partition, int]]:
        return self._input.lag(self._checkpoint.positions)
