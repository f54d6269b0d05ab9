"""The run loop: poll → process → produce → commit, over the client interfaces of login_pipeline.client.

Contract of `Pipeline.run`:
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
- Commits: a batch's offsets are committed only after the output cluster has acknowledged (acks=all,
  idempotent producer) every record produced from that batch and from every batch before it, as the
  Output reports it (login_pipeline.offsets keeps that bookkeeping). Nothing is auto-committed,
  and commits are sent without waiting for their answer. So a crash can repeat the uncommitted
  batches (the ones in flight, the one being processed, and one whose commit was unanswered),
  never skip them.
- Pipelining: up to IN_FLIGHT_BATCHES batches stay in flight while the next is processed, so
  processing overlaps producing and the output cluster's acknowledgement.
- Rebalances: partitions are only revoked inside poll or close; before they go, the revoke
  handler waits up to REVOKE_SETTLE_S (a quarter of the session timeout, so the member keeps its
  place in the group) for the batches in flight and commits what was acknowledged. Batches not
  acknowledged by then are abandoned: never committed, so whoever owns the partitions next
  delivers them again (duplicates, never loss).
- Output failures: a batch whose delivery fails is never committed; the input rewinds to the
  first offsets still in flight and retries with capped exponential backoff until the output
  cluster is back. A batch the output cluster refuses to take from us (a missing ACL) stops the
  run at once, exit 1, nothing committed past the last acknowledged batch.
- Live insights (login_pipeline.live, when given): each delivered batch is handed to the windows
  and alert rules once, with the insights; they publish what closes (`tick`, once a loop turn, or
  by themselves in their own process), and before partitions are revoked or the final commit the
  open windows go out as partial records (bounded waits: REVOKE_PUBLISH_S, FINAL_PUBLISH_TIMEOUT_S).
  They never hold back a commit.
- Stop: the first SIGINT/SIGTERM finishes the batch in hand, waits for everything in flight,
  commits every delivered position and waits for the answer, prints the final insights and leaves
  the group: exit 0 when the final commit succeeded,
  1 (with one line) when it did not. A second one exits at once, committing nothing more.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional, TextIO

from login_pipeline import engines, gc_tuning, web
from login_pipeline.client import (
    HandOver,
    Input,
    InputRefused,
    InputUnavailable,
    Output,
    OutputGone,
    Partition,
    Polled,
    StartupError,
)
from login_pipeline.config import Config
from login_pipeline.insights import Insights
from login_pipeline.live import KEPT_WINDOWS, FeedReader, GroupView, Live
from login_pipeline.live_process import LiveProcess
from login_pipeline.metrics import PipelineMetrics
from login_pipeline.offsets import InFlightBatch, Offsets
from login_pipeline.results import (
    MALFORMED_JSON,
    PROCESSING_ERROR,
    RECORD_TOO_LARGE,
    ProcessedLogin,
    ProcessingResult,
    Rejection,
)
from login_pipeline.routing import fits, near_limit, source_headers
from login_pipeline.status_server import Verdict, serving

log = logging.getLogger(__name__)

Process = Callable[[bytes, float], ProcessingResult]

POLL_TIMEOUT_S = 0.5
MAX_BACKOFF_S = 30.0
# Batches handed over but not yet acknowledged while the next is processed. With one, the run loop
# still waited a quarter of its time for acknowledgements (py-spy); two raised processor/passthrough
# from 0.74-0.79 to 0.87 (median of 5 alternating runs). Each one adds a batch a crash can repeat.
IN_FLIGHT_BATCHES = 2
HANDOVER_RECORDS = 250  # records per hand-over to the output: pipelined, yet cheap to pickle
SESSION_TIMEOUT_S = 10.0
# The rebalance handler runs where the client heartbeats (kafka-python's network thread, or inside
# librdkafka's poll): it may not wait long there, or the group evicts the member.
REVOKE_SETTLE_S = SESSION_TIMEOUT_S / 4
FINAL_COMMIT_TIMEOUT_S = 30.0
FINAL_PUBLISH_TIMEOUT_S = 10.0  # the open windows' partial records at a stop
REVOKE_PUBLISH_S = 1.0  # and at a revoke, inside the heartbeat's budget (REVOKE_SETTLE_S) with the settling
NULL_VALUE = Rejection(MALFORMED_JSON, None, "the record has no value (null)")


class DeliveryFailed(Exception):
    """The output cluster did not acknowledge a batch; the input was rewound to resend it."""


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


class Pipeline:
    def __init__(
        self,
        config: Config,
        process: Process,
        source: Input,
        output: Output,
        stop: StopRequest,
        out: TextIO = sys.stdout,
        clock: Callable[[], float] = time.time,
        live: Optional[Live] = None,
    ) -> None:
        self._config = config
        self.live = live
        self._process = process
        self._input = source
        self._output = output
        self._stop = stop
        self._out = out
        self._clock = clock
        self.insights = Insights()
        self.offsets = Offsets()
        self.metrics = PipelineMetrics(config, self.insights, clock, live)
        self.last_iteration = time.monotonic()  # liveness: the loop came round at this time
        self.joined = False  # readiness: the member holds its assignment (possibly none)
        self.last_lag: Optional[int] = None  # records behind, over the assigned partitions, at the last turn
        source.subscribe(self._settle_before_revoke, self._commit_answered, self._assigned)

    def run(self) -> int:
        """Process until stopped; returns the exit code (0: stopped cleanly with everything committed)."""
        config = self._config
        log.info(
            "consuming %s from %s as group %s; output %s, dead letters %s on %s",
            config.input_topic,
            ",".join(config.input_bootstrap_servers),
            config.consumer_group,
            config.output_topic,
            config.dlq_topic,
            ",".join(config.output_bootstrap_servers),
        )
        exit_code = 0
        try:
            failures = self._loop()
            try:
                self._settle(keep=0)
            except DeliveryFailed:
                failures += 1
            if failures:
                log.error("stopped with an undelivered batch; it was not committed and will be processed on restart")
                exit_code = 1
        except OutputGone as error:
            self.offsets.in_flight.clear()  # their acknowledgements will never come: left uncommitted
            log.error("%s; nothing was committed past the last acknowledged batch", error)
            exit_code = 1
        except InputRefused as error:
            log.error(
                "the input cluster refused the consumer (%s); nothing was committed past the last acknowledged batch",
                error,
            )
            exit_code = 1
        finally:
            if self.live is not None:
                self.live.flush("stop", FINAL_PUBLISH_TIMEOUT_S)
            if not self._commit():
                log.error(
                    "the final commit failed; a restart repeats what %d partitions had uncommitted",
                    self.offsets.pending,
                )
                exit_code = 1
            self._print_insights(final=True)
            self._input.close()
            self._output.close()
            if self.live is not None:
                self.live.close()
        return exit_code

    def _loop(self) -> int:
        """Poll, hand over, settle, commit until stopped; returns how many deliveries in a row failed."""
        every = self._config.insights_every
        blocks_printed = 0
        failures = 0
        metrics = self.metrics
        while not self._stop.requested:
            self.last_iteration = time.monotonic()
            try:
                polled = self._input.poll(POLL_TIMEOUT_S)
            except InputUnavailable as error:
                # The input cluster is away (found by stopping it under load): wait for it, skip nothing.
                log.warning("the input cluster is unavailable (%s); polling again in 1 s", error)
                self._stop.sleep(1.0)
                continue
            if polled:
                metrics.consumed.inc(sum(len(part.offsets) for part in polled))
                began = time.monotonic()
                batch = self._hand_over(polled)
                batch.handed_at = time.monotonic()
                metrics.processing.observe(batch.handed_at - began)
                self.offsets.handed_over(batch)
            # The newest batches stay in flight while the next one is processed; with nothing new, settle all.
            try:
                if self._settle(keep=IN_FLIGHT_BATCHES if polled else 0):
                    failures = 0
                    self._commit_in_background()
            except DeliveryFailed:
                failures += 1
                backoff = min(MAX_BACKOFF_S, 0.5 * 2**failures)
                log.error(
                    "the output cluster did not acknowledge a batch; nothing committed past it, "
                    "retrying it in %.1f s (attempt %d)",
                    backoff,
                    failures + 1,
                )
                self._stop.sleep(backoff)
            if self.live is not None:
                self.live.tick()
            metrics.in_flight.set(len(self.offsets.in_flight))
            metrics.assigned.set(len(self._input.assignment()))
            self._read_lags()
            # At most one block per batch, so draining a backlog does not flood the terminal.
            if self.insights.processed // every > blocks_printed:
                blocks_printed = self.insights.processed // every
                self._print_insights()
        return failures

    def _hand_over(self, polled: list[Polled]) -> InFlightBatch:
        """Process every record polled and hand the results to the output."""
        processed_at = self._clock()
        process, send = self._process, self._output.send
        output_limit = self._output.size_limits[self._config.output_topic]
        results = []
        dead_letters = 0
        for part in polled:
            partition = part.partition
            records = HandOver.of(partition)
            for offset, key, raw in zip(part.offsets, part.keys, part.values):
                if raw is None:  # legal in Kafka (a tombstone); not a login
                    result: ProcessingResult = NULL_VALUE
                else:
                    try:
                        result = process(raw, processed_at)
                    except Exception as error:
                        # A bug in process_message must not stall the partition: park the message instead.
                        result = _processing_error(error, partition, offset)
                if (
                    result.__class__ is ProcessedLogin
                    and near_limit(output_limit, result.key, result.value)
                    and not fits(output_limit, result.key, result.value, source_headers(*partition, offset))
                ):
                    # Too large for the output topic: the input goes to the dead-letter topic, bytes and all.
                    result = Rejection(
                        RECORD_TOO_LARGE, None, "the processed login is larger than the output topic takes"
                    )
                if isinstance(result, ProcessedLogin):
                    records.add(offset, result.key, result.value)
                else:  # the dead-letter topic gets the original key and bytes, untouched
                    records.add(offset, key, raw, result)
                    dead_letters += 1
                results.append(result)
                if len(records.offsets) == HANDOVER_RECORDS:
                    send(records)
                    records = HandOver.of(partition)
            if records.offsets:
                send(records)
        self._output.end_batch()
        self.metrics.produced.labels("dlq").inc(dead_letters)
        self.metrics.produced.labels("output").inc(len(results) - dead_letters)
        return InFlightBatch(
            {part.partition: part.offsets[0] for part in polled},
            {part.partition: part.offsets[-1] + 1 for part in polled},
            results,
            processed_at=processed_at,
            spans=[(part.partition.partition, len(part.offsets)) for part in polled],
        )

    def _settle(self, keep: int, within: float | None = None) -> int:
        """Read reports until at most `keep` batches are in flight; returns how many were delivered.

        A failed batch is not committed, nor is any batch behind it: the input rewinds to the
        first offsets in flight, so they are processed and produced again, and DeliveryFailed is
        raised. With `within` (seconds), batches still unreported by then are abandoned instead of
        waited for.
        """
        offsets = self.offsets
        delivered = 0
        deadline = None if within is None else time.monotonic() + within
        while len(offsets.in_flight) > keep:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            report = self._output.acknowledgement(remaining)
            if report is None:
                offsets.abandon_in_flight()
                log.warning(
                    "%d batches were not acknowledged within %.1f s of a rebalance; left uncommitted, "
                    "they will be delivered again",
                    len(offsets.in_flight),
                    within,
                )
                break
            if report.producer_restarts:
                self.metrics.producer_restarts.inc(report.producer_restarts)
            batch = offsets.oldest()
            if batch.abandoned:
                continue
            if report.refused:
                # Retrying cannot help, and going on would commit nothing anyway: stop, with one line.
                raise OutputGone(f"the output cluster refused to take the batch ({report.failure})")
            if report.failure:
                self.metrics.delivery_failures.inc()
                log.error("the output cluster did not acknowledge the batch: %s", report.failure)
                assigned = self._input.assignment()
                for partition, offset in offsets.rewind_from(batch).items():
                    if partition in assigned:
                        self._input.seek(partition, offset)
                raise DeliveryFailed(report.failure)
            delivered += 1
            for rerouted in report.rerouted:
                batch.results[rerouted.position] = Rejection(
                    rerouted.reason, None, "the output cluster refused the record"
                )
            # Insights count a message once, when its batch is delivered, however often it was retried.
            insights = self.insights
            with insights.lock:
                valid_before = insights.valid
                insights.observe(batch.results)
                valid = insights.valid - valid_before
            if self.live is not None:
                self.live.observe(batch.results, batch.spans, batch.processed_at)
            self.metrics.acknowledged.labels("output").inc(valid)
            self.metrics.acknowledged.labels("dlq").inc(len(batch.results) - valid)
            self.metrics.acknowledgement.observe(time.monotonic() - batch.handed_at)
            offsets.delivered(batch)
        return delivered

    def _commit_in_background(self) -> None:
        """Send the commit of every delivered offset without waiting for its answer.

        Waiting took an eighth of the run loop's time (profiled with py-spy under load). Commits are
        answered in order; after a failed one, the next commit repeats every delivered position.
        """
        offsets = self.offsets.take_commit()
        if offsets:
            with self.metrics.commit.time():
                self._input.commit_in_background(offsets)

    def _commit_answered(self, error: str | None) -> None:
        if error is None:
            self.metrics.commit_confirmed()
            return
        self.metrics.commit_failures.inc()
        log.warning("commit failed (%s); will retry with the next batch", error)
        self.offsets.commit_failed()

    def _assigned(self, partitions: set[Partition]) -> None:
        self.joined = True  # the loop reads what is held (the assigned-partitions gauge) at each turn
        if self.live is not None:
            self.live.assigned({partition.partition for partition in partitions})

    def _commit(self) -> bool:
        """Commit every delivered position and wait; False when it failed (kept: duplicates, never loss)."""
        offsets = self.offsets.take_final_commit()
        if not offsets:
            return True
        with self.metrics.commit.time():
            committed = self._input.commit(offsets, FINAL_COMMIT_TIMEOUT_S)
        if committed:
            self.metrics.commit_confirmed()
            return True
        self.metrics.commit_failures.inc()
        self.offsets.commit_failed()
        return False

    def _settle_before_revoke(self, revoked: set[Partition]) -> dict[Partition, int]:
        """Before partitions go: settle what is in flight (bounded), return what was delivered to commit."""
        self.joined = False
        self.metrics.rebalances.inc()
        try:
            self._settle(keep=0, within=REVOKE_SETTLE_S)
        except DeliveryFailed:
            pass  # rewound and left uncommitted; whoever owns the partitions next processes it again
        except OutputGone:
            self.offsets.in_flight.clear()  # the run loop meets the same error at its next hand-over and stops
        if self.live is not None:
            # The open windows go out as partials now: whoever takes the partitions starts new ones,
            # and a reader adds the two up.
            self.live.flush("revoke", REVOKE_PUBLISH_S)
        offsets = self.offsets.take_commit()
        self.offsets.forget(revoked)
        return offsets

    def liveness(self) -> Verdict:
        """Live while the loop comes round within LIVENESS_TIMEOUT_S (every wait inside it is shorter)."""
        stuck_for = time.monotonic() - self.last_iteration
        if stuck_for > self._config.liveness_timeout_s:
            return Verdict(False, (f"the run loop has not come round for {stuck_for:.0f} s",))
        return Verdict(True)

    def readiness(self, silent_clusters: list[str]) -> Verdict:
        """Ready when both clusters answer, the member holds its assignment and the output is alive."""
        reasons = [f"the {name} cluster does not answer" for name in silent_clusters]
        if not self.joined:
            reasons.append("not a member of the consumer group (joining or rebalancing)")
        if not self._output.alive():
            reasons.append("the output is gone")
        if self._stop.requested:
            reasons.append("stopping")
        return Verdict(not reasons, tuple(reasons))

    def this_instance(self) -> dict[str, Any]:
        """This instance's part of /api/insights: running totals and live windows. Called from HTTP threads."""
        with self.insights.lock:
            running_totals = self.insights.snapshot(self.last_lag)
        return {"running_totals": running_totals, **(self.live.snapshot() if self.live is not None else {})}

    def _read_lags(self) -> None:
        """Ask the input how far behind each partition is: for the metrics, the API and the printed block."""
        lags = self._input.lag(self.offsets.positions)
        self.metrics.set_lags(lags)
        self.last_lag = sum(lags.values()) if lags else None

    def _print_insights(self, final: bool = False) -> None:
        """The insights block, with the lag read at this loop turn (or read afresh for the final one)."""
        if final:
            self._read_lags()
        block = self.insights.render(self.last_lag, title="final insights" if final else "insights")
        print(block, file=self._out, flush=True)


def _processing_error(error: Exception, partition: Partition, offset: int) -> Rejection:
    """The rejection, and one log line, for process_message raising: its type and where, never its text,
    which may quote the input (an ip, say)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "unknown"
    log.error(
        "process_message raised %s (%s) at %s:%d offset %d; sent to the dead-letter topic",
        type(error).__name__,
        where,
        partition.topic,
        partition.partition,
        offset,
        extra={"topic": partition.topic, "partition": partition.partition, "offset": offset},
    )
    return Rejection(PROCESSING_ERROR, None, f"process_message raised {type(error).__name__}")


def main(config: Config, process: Process, pseudonymize: Callable[[str], str]) -> int:
    """Run the pipeline with signal handling and its HTTP server; startup problems: one line, exit 1.

    `pseudonymize` hashes a user id for the alerts, with the key that hashes ip and device_id.
    """
    stop = StopRequest()
    stop.install()
    try:
        source, output = engines.connect(config)
    except StartupError as error:
        log.error("%s", error)
        return 1
    live: Optional[Live] = None
    view = feed = None
    if config.live_insights:
        try:
            live = LiveProcess(config, pseudonymize)
        except StartupError as error:
            log.error("%s", error)
            source.close()  # the consumer (not yet subscribed), and the output process it started
            output.close()
            return 1
        if config.metrics_port:  # the group's view is read back only for the HTTP server to show
            view = GroupView(config.insights_topic, config.alerts_topic)
            feed = engines.live_feed(config, time.time() - KEPT_WINDOWS * config.windows.size_s)
    pipeline = Pipeline(config, process, source, output, stop, live=live)
    gc_tuning.settle()
    reader = FeedReader(feed, view).start() if view is not None and feed is not None else None
    pages = web.pages(pipeline.this_instance, view) if view is not None else {}
    try:
        with serving(
            config.metrics_host,
            config.metrics_port,
            pipeline.metrics.registry,
            pipeline.liveness,
            pipeline.readiness,
            lambda: engines.probes(config),
            pages,
        ):
            return pipeline.run()
    finally:
        if reader is not None:
            reader.stop()
