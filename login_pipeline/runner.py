"""The run loop: poll → process → produce → commit. The one place that talks to Kafka.

Contract of `Pipeline.run`:
- Every input message yields exactly one record: the processed login on the output topic, or the
  original key and value bytes on the dead-letter topic. Both carry source.topic, source.partition
  and source.offset headers, so downstream can deduplicate on them.
- Every record Kafka can deliver is routed: a null value, any key, any headers, any size. One the
  output cluster refuses for what it is goes to the dead-letter topic in a form that fits
  (login_pipeline.output); the partition never stalls on a record.
- Ordering: records are produced in input-offset order per input partition, and the output topic
  is keyed by user id, so one user's logins from one input partition keep their order. After an
  output failure the failed batch and the ones behind it are produced again, after what went
  before, so a retried record can appear twice, the second time after later ones.
- Commits: a batch's offsets are committed only after the output cluster has acknowledged (acks=all,
  idempotent producer) every record produced from that batch and from every batch before it, as the
  output process reports it. Nothing is auto-committed, and commits are sent without waiting for
  their answer. So a crash can repeat the uncommitted batches (the ones in flight, the one being
  processed, and one whose commit was unanswered), never skip them.
- Pipelining: up to IN_FLIGHT_BATCHES batches stay in flight while the next is processed, so
  processing overlaps producing and the output cluster's acknowledgement.
- Rebalances: partitions are only revoked inside poll or close; before they go, the rebalance
  listener waits up to REVOKE_SETTLE_S (a quarter of the session timeout, so the member keeps its
  place in the group) for the batches in flight and commits what was acknowledged. Batches not
  acknowledged by then are abandoned: never committed, so whoever owns the partitions next
  delivers them again (duplicates, never loss).
- Output failures: a batch whose delivery fails is never committed; the consumer rewinds to the
  first offsets still in flight and retries with capped exponential backoff until the output
  cluster is back.
- Stop: the first SIGINT/SIGTERM finishes the batch in hand, waits for everything in flight,
  commits, prints the final insights and leaves the group: exit 0 when the final commit succeeded,
  1 (with one line) when it did not. A second one exits at once, committing nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

from kafka import AsyncConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import CommitFailedError, KafkaError, RetriableError
from kafka.structs import OffsetAndMetadata

from login_pipeline.config import Config
from login_pipeline.insights import Insights
from login_pipeline.output import HandOver, OutputProcess, OutputProcessError, fits, near_limit, source_headers
from login_pipeline.results import (
    MALFORMED_JSON, PROCESSING_ERROR, RECORD_TOO_LARGE, ProcessedLogin, ProcessingResult, Rejection,
)

log = logging.getLogger(__name__)

Process = Callable[[bytes, float], ProcessingResult]

POLL_TIMEOUT_MS = 500
DELIVERY_TIMEOUT_MS = 60_000
# The producer settles every record within its delivery timeout, and a refused one's dead-letter copy within another.
ACK_TIMEOUT_S = 2 * DELIVERY_TIMEOUT_MS / 1000 + 30
MAX_BACKOFF_S = 30.0
# Batches handed over but not yet acknowledged while the next is processed. With one, the run loop
# still waited a quarter of its time for acknowledgements (py-spy); two raised processor/passthrough
# from 0.74-0.79 to 0.87 (median of 5 alternating runs). Each one adds a batch a crash can repeat.
IN_FLIGHT_BATCHES = 2
HANDOVER_RECORDS = 250  # records per hand-over to the output process: pipelined, yet cheap to pickle
STARTUP_TIMEOUT_MS = 15_000
SESSION_TIMEOUT_MS = 10_000
# The rebalance listener runs on the consumer's network thread, which also heartbeats: it may not
# wait long there, or the group evicts the member.
REVOKE_SETTLE_S = SESSION_TIMEOUT_MS / 1000 / 4
# The default 30 s cap meant catching up 20 s after a broker came back; 2 s keeps recovery prompt.
RECONNECT_BACKOFF_MAX_MS = 2_000


class StartupError(Exception):
    """The clusters or topics are not usable; str() is the one line shown to the user."""


class DeliveryFailed(Exception):
    """The output cluster did not acknowledge a batch; the consumer was rewound to resend it."""


class StopRequest:
    """SIGINT/SIGTERM once: stop after the batch in hand. Twice: exit at once (nothing more committed)."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        log.info("%s: finishing the current batch, then stopping (again to exit at once)", signal.Signals(signum).name)

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))


@dataclass
class InFlightBatch:
    """A batch handed to the output process whose acknowledgement has not been read yet."""

    first_offsets: dict[TopicPartition, int]
    next_offsets: dict[TopicPartition, int]
    results: list[ProcessingResult]
    # Given up on after a rewind or a revoke: its report is read and ignored, nothing of it is committed.
    abandoned: bool = False


class Pipeline:
    def __init__(self, config: Config, process: Process, stop: StopRequest, out: TextIO = sys.stdout) -> None:
        self._config = config
        self._process = process
        self._stop = stop
        self._out = out
        self.insights = Insights()
        self._in_flight: deque[InFlightBatch] = deque()
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._consumer, self._output = self._connect()

    def _connect(self) -> tuple[KafkaConsumer, OutputProcess]:
        config = self._config
        security = config.client_security()
        with _client_logs_quiet():
            _check_topics("input", config.input_bootstrap_servers, security, [config.input_topic])
            size_limits = _check_topics("output", config.output_bootstrap_servers, security,
                                        [config.output_topic, config.dlq_topic])
        try:
            output = OutputProcess({**producer_settings(config.output_bootstrap_servers), **security},
                                   config.output_topic, config.dlq_topic, ACK_TIMEOUT_S, size_limits)
        except OutputProcessError as error:
            raise StartupError(str(error)) from None
        consumer = KafkaConsumer(**consumer_settings(config.input_bootstrap_servers, config.consumer_group,
                                                     config.batch_size), **security)
        consumer.subscribe([config.input_topic], listener=SettleBeforeRevoke(self))
        return consumer, output

    def run(self) -> int:
        """Process until stopped; returns the exit code (0: stopped cleanly with everything committed)."""
        config = self._config
        log.info("consuming %s from %s as group %s; output %s, dead letters %s on %s",
                 config.input_topic, ",".join(config.input_bootstrap_servers), config.consumer_group,
                 config.output_topic, config.dlq_topic, ",".join(config.output_bootstrap_servers))
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
        except OutputProcessError as error:
            self._in_flight.clear()  # their acknowledgements will never come: left uncommitted
            log.error("%s; nothing was committed past the last acknowledged batch", error)
            exit_code = 1
        except KafkaError as error:  # not retriable: authorization, a deleted topic, a fenced member...
            log.error("the input cluster refused the consumer (%s: %s); nothing was committed past the "
                      "last acknowledged batch", type(error).__name__, error)
            exit_code = 1
        finally:
            if not self._commit():
                log.error("the final commit failed; a restart repeats what %d partitions had uncommitted",
                          len(self._uncommitted))
                exit_code = 1
            self._print_insights(final=True)
            self._consumer.close(autocommit=False, timeout_ms=10_000)
            self._output.close()
        return exit_code

    def _loop(self) -> int:
        """Poll, hand over, settle, commit until stopped; returns how many deliveries in a row failed."""
        every = self._config.insights_every
        blocks_printed = 0
        failures = 0
        while not self._stop.requested:
            try:
                batch = self._consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            except RetriableError as error:
                # The input cluster is away (found by stopping it under load): wait for it, skip nothing.
                log.warning("the input cluster is unavailable (%s); polling again in 1 s", type(error).__name__)
                self._stop.sleep(1.0)
                continue
            if batch:
                self._in_flight.append(self._hand_over(batch))
            # The newest batches stay in flight while the next one is processed; with nothing new, settle all.
            try:
                if self._settle(keep=IN_FLIGHT_BATCHES if batch else 0):
                    failures = 0
                    self._commit_in_background()
            except DeliveryFailed:
                failures += 1
                backoff = min(MAX_BACKOFF_S, 0.5 * 2**failures)
                log.error("the output cluster did not acknowledge a batch; nothing committed past it, "
                          "retrying it in %.1f s (attempt %d)", backoff, failures + 1)
                self._stop.sleep(backoff)
            # At most one block per batch, so draining a backlog does not flood the terminal.
            if self.insights.processed // every > blocks_printed:
                blocks_printed = self.insights.processed // every
                self._print_insights()
        return failures

    def _hand_over(self, batch: dict[TopicPartition, list]) -> InFlightBatch:
        """Process every message of the batch and hand the records to the output process."""
        processed_at = time.time()
        process, send = self._process, self._output.send
        output_limit = self._output.size_limits[self._config.output_topic]
        results = []
        for tp, messages in batch.items():
            records = HandOver.of(tp.topic, tp.partition)
            for message in messages:
                raw = message.value
                if raw is None:  # legal in Kafka (a tombstone); not a login
                    result: ProcessingResult = NULL_VALUE
                else:
                    try:
                        result = process(raw, processed_at)
                    except Exception as error:
                        # A bug in process_message must not stall the partition: park the message instead.
                        result = _processing_error(error, tp, message.offset)
                if result.__class__ is ProcessedLogin and near_limit(output_limit, result.key, result.value) and not fits(
                        output_limit, result.key, result.value, source_headers(tp.topic, tp.partition, message.offset)):
                    # Too large for the output topic: the input goes to the dead-letter topic, bytes and all.
                    result = Rejection(RECORD_TOO_LARGE, None, "the processed login is larger than the output topic takes")
                if result.__class__ is ProcessedLogin:
                    records.add(message.offset, result.key, result.value)
                else:  # the dead-letter topic gets the original key and bytes, untouched
                    records.add(message.offset, message.key, raw, result)
                results.append(result)
                if len(records.offsets) == HANDOVER_RECORDS:
                    send(records)
                    records = HandOver.of(tp.topic, tp.partition)
            if records.offsets:
                send(records)
        self._output.end_batch()
        return InFlightBatch({tp: messages[0].offset for tp, messages in batch.items()},
                             {tp: messages[-1].offset + 1 for tp, messages in batch.items()}, results)

    def _settle(self, keep: int, within: float | None = None) -> int:
        """Read reports until at most `keep` batches are in flight; returns how many were delivered.

        A failed batch is not committed, nor is any batch behind it: the consumer rewinds to the
        first offsets in flight, so they are processed and produced again, and DeliveryFailed is
        raised. With `within` (seconds), batches still unreported by then are abandoned instead of
        waited for.
        """
        delivered = 0
        deadline = None if within is None else time.monotonic() + within
        while len(self._in_flight) > keep:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            report = self._output.acknowledgement(remaining)
            if report is None:
                self._abandon_in_flight()
                log.warning("%d batches were not acknowledged within %.1f s of a rebalance; left uncommitted, "
                            "they will be delivered again", len(self._in_flight), within)
                break
            batch = self._in_flight.popleft()
            if batch.abandoned:
                continue
            if report.failure:
                log.error("the output cluster did not acknowledge the batch: %s", report.failure)
                self._rewind(batch)
                raise DeliveryFailed(report.failure)
            delivered += 1
            for rerouted in report.rerouted:
                batch.results[rerouted.position] = Rejection(
                    rerouted.reason, None, "the output cluster refused the record")
            # Insights count a message once, when its batch is delivered, however often it was retried.
            for result in batch.results:
                self.insights.observe(result)
            for tp, next_offset in batch.next_offsets.items():
                self._uncommitted[tp] = OffsetAndMetadata(next_offset, "", -1)
                self._positions[tp] = next_offset
        return delivered

    def _abandon_in_flight(self) -> None:
        for batch in self._in_flight:
            batch.abandoned = True

    def _rewind(self, failed: InFlightBatch) -> None:
        """Abandon the failed batch and every batch behind it; seek back to the first offsets among them."""
        abandoned = [failed, *(batch for batch in self._in_flight if not batch.abandoned)]
        self._abandon_in_flight()  # produced again after the rewind, whatever becomes of them
        first_offsets = {}
        for batch in reversed(abandoned):  # older batches overwrite: the earliest offset wins
            first_offsets.update(batch.first_offsets)
        assigned = self._consumer.assignment()
        for tp, offset in first_offsets.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)

    def _commit_in_background(self) -> None:
        """Send the commit of every delivered offset without waiting for its answer.

        Waiting took an eighth of the run loop's time (profiled with py-spy under load). Commits are
        answered in order; after a failed one, the next commit repeats every delivered position.
        """
        if self._uncommitted:
            offsets, self._uncommitted = self._uncommitted, {}
            self._consumer.commit_async(offsets, callback=self._commit_answered)

    def _commit_answered(self, _offsets, response) -> None:
        if isinstance(response, Exception):
            log.warning("commit failed (%s); will retry with the next batch", type(response).__name__)
            for tp, next_offset in self._positions.items():
                self._uncommitted.setdefault(tp, OffsetAndMetadata(next_offset, "", -1))

    def _commit(self) -> bool:
        """Commit every delivered offset and wait; False when it failed (kept for the next try: duplicates, never loss)."""
        if not self._uncommitted:
            return True
        offsets = self._uncommitted
        try:
            self._consumer.commit(offsets=offsets, timeout_ms=30_000)
            self._uncommitted = {}
            return True
        except CommitFailedError:
            # The group rebalanced away from us; the new owner resumes from the last committed offsets.
            log.warning("commit rejected after a rebalance; the new owner will repeat what %d partitions had "
                        "uncommitted", len(offsets))
        except KafkaError as error:
            log.warning("commit failed (%s)", type(error).__name__)
        return False

    async def settle_and_commit_before_revoke(self, revoked) -> None:
        """Called by the consumer before partitions go: settle what is in flight, commit what was delivered."""
        try:
            self._settle(keep=0, within=REVOKE_SETTLE_S)
        except DeliveryFailed:
            pass  # rewound and left uncommitted; whoever owns the partitions next processes it again
        except OutputProcessError:
            self._in_flight.clear()  # the run loop meets the same error at its next hand-over and stops
        for tp in revoked:
            self._positions.pop(tp, None)  # never committed again by us, should a later commit fail
        if not self._uncommitted:
            return
        offsets, self._uncommitted = self._uncommitted, {}
        try:
            await self._consumer.commit_async(offsets)
        except KafkaError as error:
            log.warning("commit before a rebalance failed (%s); the new owner will repeat what %d partitions "
                        "had uncommitted", type(error).__name__, len(offsets))

    def _lag(self) -> int | None:
        lags = []
        for tp in self._consumer.assignment():
            highwater, position = self._consumer.highwater(tp), self._positions.get(tp)
            if highwater is None or position is None:
                return None
            lags.append(max(highwater - position, 0))
        return sum(lags) if lags else None

    def _print_insights(self, final: bool = False) -> None:
        block = self.insights.render(self._lag(), title="final insights" if final else "insights")
        print(block, file=self._out, flush=True)


class SettleBeforeRevoke(AsyncConsumerRebalanceListener):
    """Nothing consumed from a partition stays pending when it is revoked.

    The consumer runs this on its IO thread while the run loop waits inside poll or close, so it
    never races the loop. Async, because only an awaited commit can be made from that thread.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked) -> None:
        await self._pipeline.settle_and_commit_before_revoke(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        pass


def consumer_settings(servers, group: str, batch_size: int) -> dict:
    """The input side: manual commits only, a new group starts at the beginning, batches of batch_size."""
    return dict(
        bootstrap_servers=list(servers),
        group_id=group,
        client_id="login-processor",
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # nothing is skipped when a group starts
        max_poll_records=batch_size,
        # A crashed member's partitions wait this long for a new owner (the default is 45 s).
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=SESSION_TIMEOUT_MS // 4,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
    )


def producer_settings(servers) -> dict:
    """The output side: every record acknowledged by all in-sync replicas, no duplicates from retries."""
    return dict(
        bootstrap_servers=list(servers),
        client_id="login-processor",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        batch_size=256 * 1024,
        delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
        max_block_ms=30_000,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
    )


NULL_VALUE = Rejection(MALFORMED_JSON, None, "the record has no value (null)")


def _processing_error(error: Exception, tp: TopicPartition, offset: int) -> Rejection:
    """The rejection, and one log line, for process_message raising: its type and where, never its text,
    which may quote the input (an ip, say)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "unknown"
    log.error("process_message raised %s (%s) at %s:%d offset %d; sent to the dead-letter topic",
              type(error).__name__, where, tp.topic, tp.partition, offset)
    return Rejection(PROCESSING_ERROR, None, f"process_message raised {type(error).__name__}")


@contextlib.contextmanager
def _client_logs_quiet() -> Iterator[None]:
    """Silence the client's own retry chatter while start-up checks run: their outcome is one line of ours."""
    client_log = logging.getLogger("kafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client_log.setLevel(level)


def _check_topics(name: str, servers: tuple[str, ...], security: dict, topics: list[str]) -> dict[str, int]:
    """Fail fast, with one line, when a cluster is unreachable or lacks a topic the pipeline needs.

    Returns each topic's max.message.bytes where the cluster tells it (DescribeConfigs), so records
    too large for a topic are known before they are sent.
    """
    try:
        with KafkaAdminClient(bootstrap_servers=list(servers), bootstrap_timeout_ms=STARTUP_TIMEOUT_MS,
                              request_timeout_ms=STARTUP_TIMEOUT_MS, **security) as admin:
            existing = set(admin.list_topics())
            missing = [topic for topic in topics if topic not in existing]
            if missing:
                raise StartupError(f"topic {missing[0]!r} does not exist on the {name} cluster at {','.join(servers)}")
            return _size_limits(admin, topics)
    except KafkaError as error:
        raise StartupError(f"cannot reach the {name} cluster at {','.join(servers)} ({type(error).__name__})") from None


def _size_limits(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None}) for topic in topics],
            config_filter="all")
        return {topic: int(configs["max.message.bytes"]["value"])
                for topic, configs in described.get("topic", {}).items() if "max.message.bytes" in configs}
    except KafkaError as error:  # not allowed to describe: the producer's own limit applies
        log.warning("cannot read max.message.bytes of %s (%s); assuming the producer's limit",
                    ", ".join(topics), type(error).__name__)
        return {}


def main(config: Config, process: Process) -> int:
    """Run the pipeline with signal handling; startup problems become one line and exit code 1."""
    stop = StopRequest()
    stop.install()
    try:
        pipeline = Pipeline(config, process, stop)
    except StartupError as error:
        log.error("%s", error)
        return 1
    return pipeline.run()
