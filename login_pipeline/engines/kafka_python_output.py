"""The output side, in a child process: produce what the run loop hands over, report when all is acknowledged.

Why a process: kafka-python spends about 30 us of Python per record inside send(), and one
interpreter holds one core. Measured under load, the single-process processor kept one core busy
while the other stood idle. Producing from a second process lets processing and producing run on
both cores; the run loop's contract is unchanged, because it commits a batch only after the
output process has reported that every record of the batch was acknowledged by the output cluster.

`OutputProcess` is login_pipeline.client.Output; its contract is stated there. Here besides:
- Partitioning follows the default partitioner's rule with a faster murmur2, so each user's records
  go where Java's and kafka-python's producers would put them. The keys are hashed on the parent's
  side of the pipe: the child is the busier process (py-spy under load: the child never idle, the
  run loop idle half its time), and this moved 11 % of the child's time to the parent (1.19x the
  throughput, side by side on real brokers).
- What becomes of each record (routing, size limits, rerouting, the report) is the delivery core's
  (login_pipeline.delivery); the child produces, hands kafka-python's answers back in order, and
  classifies its errors. A record too large for its topic is never sent (the core checks first):
  kafka-python's idempotent producer treats a broker's refusal of a one-record batch as fatal, so
  this engine relies on the topics' limits read at start. A producer left fatal all the same is
  replaced by a new one, and the batches it failed are retried.
- An exception the child did not expect fails the batch it happened in; the child never dies of it.
- The child is run by login_pipeline.child_process (signals ignored, typed messages, a bounded
  stop), and exits when the parent closes it or disappears, so it never outlives the processor.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections import deque
from multiprocessing.connection import Connection
from typing import NamedTuple, Optional, TypeVar, Union, cast

from kafka import KafkaProducer
from kafka.errors import (
    AuthorizationError,
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    SaslAuthenticationFailedError,
)

from login_pipeline import gc_tuning
from login_pipeline.child_process import Child, Close
from login_pipeline.client import BatchReport, HandOver, OutputGone
from login_pipeline.delivery import BatchDelivery, ClientError, ErrorKind, Route, route_of
from login_pipeline.routing import DEFAULT_MAX_REQUEST_SIZE, Headers, effective_limits

log = logging.getLogger(__name__)
Answer = TypeVar("Answer", bound=Union["Started", BatchReport])

SEND_BUFFER_BYTES = 4 * 1024 * 1024
START_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 30.0  # the child's producer flushes what it holds, within its own 10 s
ACK_CHECK_INTERVAL_S = 0.001  # how often the child looks for acknowledgements while nothing arrives
# Errors that say the record itself can never be written, so retrying it would stall its partition.
_REFUSED_FOR_SIZE = (MessageSizeTooLargeError, RecordListTooLargeError)
_REFUSED_AS_INVALID = (InvalidRecordError, CorruptRecordError)
# Errors that refuse the pipeline itself: no retry can succeed.
_REFUSED_US = (AuthorizationError, SaslAuthenticationFailedError)


# The messages between the run loop and the output child (login_pipeline.child_process).


class Records(NamedTuple):
    """Parent to child, per hand-over: the records and each login's key hash (0 for a dead letter)."""

    records: HandOver
    key_hashes: list[int]


class EndBatch(NamedTuple):
    """Parent to child: the records sent since the last EndBatch are one batch, reported as one."""


class Started(NamedTuple):
    """Child to parent, once: the producer is up (`failure` None), or why it is not."""

    failure: Optional[str] = None


# Child to parent, per batch, in the order the batches were ended: its login_pipeline.client.BatchReport.


def partition_of(key_hash: int, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and kafka-python's) picks for a key, from
    the key's murmur2 hash."""
    return (key_hash & 0x7FFFFFFF) % partitions


def key_hashes(records: HandOver) -> list[int]:
    """Each login's murmur2 key hash, 0 for a dead letter: it keeps its input key, which may be a
    megabyte of anything, and hashing that in Python would hold the run loop for tens of milliseconds."""
    rejections = records.rejections
    return [0 if index in rejections else murmur2(cast(bytes, key)) for index, key in enumerate(records.keys)]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (unsigned 32 bits), equal to kafka-python's in half its time.

    Reading whole 32-bit words with struct instead of byte by byte, and masking to 32 bits once a
    word rather than three times, as (a ^ b) & M is (a & M) ^ (b & M): 3.4 us against kafka-python's
    6.9 for a 36-byte user id (timeit, 20,000 UUIDs; the word reading alone, 3.8).
    """
    m = 0x5BD1E995
    length = len(data)
    h = 0x9747B28C ^ length
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = k * m & 0xFFFFFFFF
        h = (h * m ^ (k ^ k >> 24) * m) & 0xFFFFFFFF
    extra = length & 3
    if extra:
        if extra == 3:
            h ^= data[whole + 2] << 16
        if extra >= 2:
            h ^= data[whole + 1] << 8
        h = ((h ^ data[whole]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


class OutputProcess:
    def __init__(
        self,
        producer_settings: dict,
        output_topic: str,
        dlq_topic: str,
        timeout: float,
        size_limits: dict[str, int],
        log_format: str = "text",
    ) -> None:
        """Start the child; `size_limits` is each topic's largest record batch in bytes (max.message.bytes)."""
        self.size_limits = effective_limits(
            size_limits, (output_topic, dlq_topic), producer_settings.get("max_request_size", DEFAULT_MAX_REQUEST_SIZE)
        )
        self._timeout = timeout
        self._child = Child(
            _serve, (producer_settings, output_topic, dlq_topic, self.size_limits), "login-output", log_format
        )
        self._connection = self._child.connection
        _widen_send_buffer(self._connection)
        started = self._receive(Started, timeout=START_TIMEOUT_S)
        if started.failure is not None:
            self.close()
            raise OutputGone(f"the output process did not start: {started.failure}")

    def send(self, records: HandOver) -> None:
        """Hand over records of one input partition; a full pipe blocks, which is the backpressure.

        The keys are hashed here, in the run loop's process: the child is the busier of the two
        (py-spy under load: the child never idle, the run loop idle half its time).
        """
        self._send(Records(records, key_hashes(records)))

    def end_batch(self) -> None:
        """Close the batch: its acknowledgement will be reported after those of earlier batches."""
        self._send(EndBatch())

    def acknowledgement(self, timeout_s: float | None = None) -> BatchReport | None:
        """The report of the oldest unreported batch, waiting up to `timeout` seconds for it.

        With no timeout, waits up to the acknowledgement timeout and raises OutputGone if
        nothing came; with one, returns None when nothing came in that time.
        """
        if timeout_s is not None and not self._connection.poll(timeout_s):
            return None
        return self._receive(BatchReport, timeout=self._timeout)

    def _send(self, message: object) -> None:
        try:
            self._connection.send(message)
        except OSError as error:
            raise OutputGone(f"the output process is gone ({error})") from None

    def alive(self) -> bool:
        return self._child.alive()

    def close(self) -> None:
        self._child.stop(CLOSE_TIMEOUT_S)

    def _receive(self, expected: type[Answer], timeout: float) -> Answer:
        if not self._connection.poll(timeout):
            raise OutputGone(f"the output process did not answer within {timeout:.0f} s")
        try:
            message = self._connection.recv()
        except EOFError:
            raise OutputGone(f"the output process exited (code {self._child.exitcode})") from None
        if not isinstance(message, expected):  # cannot happen but by a bug: stop rather than guess
            raise OutputGone(f"the output process sent {type(message).__name__}, not {expected.__name__}")
        return message


def _widen_send_buffer(connection: Connection) -> None:
    """Let the run loop hand over several batches' worth of records before it waits for the child.

    With the default socket buffer (about 200 KB, of which a 100 KB hand-over takes most once the
    kernel's accounting is counted) the run loop blocked in send for a quarter of its time while the
    child waited in recv for another quarter (py-spy, under load). The kernel caps this at
    net.core.wmem_max.
    """
    with socket.socket(fileno=os.dup(connection.fileno())) as duplicate:
        duplicate.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


def _serve(
    connection: Connection, settings: dict, output_topic: str, dlq_topic: str, size_limits: dict[str, int]
) -> None:
    """The child: produce what the parent hands over, report each batch once answered, until Close."""
    try:
        producer = KafkaProducer(**settings)
    except Exception as error:  # reported to the parent, which stops with it
        connection.send(Started(f"{type(error).__name__}: {error}"))
        return
    connection.send(Started())
    gc_tuning.freeze_startup_objects()
    limits = _LearnedLimits(route_of(output_topic, dlq_topic, size_limits))
    partitioner = _Partitioner(producer, output_topic)
    batch = _Batch(limits, producer)
    unreported: deque[_Batch] = deque()
    restarts = 0  # producers replaced since the last report
    try:
        while True:
            # While batches await acknowledgement, wake up often enough to report them promptly.
            if unreported and not connection.poll(ACK_CHECK_INTERVAL_S):
                restarts = _report_settled(connection, unreported, restarts)
                continue
            try:
                message = connection.recv()
            except EOFError:
                return  # the parent is gone: nothing it did not see acknowledged was committed
            kind = type(message)
            if kind is Records:
                if batch.delivery.records == 0 and batch.route is not limits.route:
                    batch = _Batch(limits, producer)  # nothing in it yet: it takes what was learned since
                try:
                    partitions = partitioner.partitions(message.key_hashes)
                    if partitions is None:
                        batch.delivery.fail(f"the partitions of {output_topic} are unknown")
                    else:
                        batch.delivery.send(message.records, partitions)
                except Exception as error:  # a bug or a client state we did not foresee: fail the batch, live on
                    batch.delivery.fail(f"producing failed: {type(error).__name__}")
            elif kind is EndBatch:
                unreported.append(batch)
                restarts = _report_settled(connection, unreported, restarts)
                if _is_broken(producer):
                    # Every send would fail from now on: start afresh; the failed batches are retried.
                    log.warning("the producer stopped after a fatal error; starting a new one")
                    producer.close(timeout=10)
                    producer = KafkaProducer(**settings)
                    partitioner = _Partitioner(producer, output_topic)
                    restarts += 1
                partitioner.refresh()
                batch = _Batch(limits, producer)
            elif kind is Close:
                return
            else:  # cannot happen but by a bug: the batch fails and is retried, the child lives on
                batch.delivery.fail(f"the output process received {kind.__name__}")
    except ConnectionError:
        pass  # the parent was killed mid-conversation: as above, nothing unacknowledged was committed
    finally:
        producer.close(timeout=10)


class _Partitioner:
    """The output partition of each login, by the default partitioner's rule from its key hash,
    with the partition count refreshed per batch so keys follow when partitions are added."""

    def __init__(self, producer: KafkaProducer, output_topic: str) -> None:
        self._producer = producer
        self._output_topic = output_topic
        self._count = 0
        self.refresh()

    def refresh(self) -> None:
        """Metadata briefly missing keeps the last count."""
        try:
            self._count = len(self._producer.partitions_for(self._output_topic) or ()) or self._count
        except KafkaError:
            pass

    def partitions(self, key_hashes: list[int]) -> Optional[list[int]]:
        """None while the output topic's partitions are unknown."""
        if not self._count:
            self.refresh()
            if not self._count:
                return None
        count = self._count
        return [partition_of(key_hash, count) for key_hash in key_hashes]


class _LearnedLimits:
    """The topics' size limits, lowered by what the broker refused.

    kafka-python's idempotent producer takes a broker's refusal of a record as too large as fatal:
    the record cannot be rerouted by that producer, and its batch fails. Where the limits could not
    be read at start, the same record would be refused at every retry, and its partition would
    stall. So a refused size becomes the limit: when the batch is produced again, the delivery core
    finds the record too large before sending it, and reroutes it.
    """

    def __init__(self, route: Route) -> None:
        self.route = route

    def refused(self, topic: str, key_and_value_bytes: int) -> None:
        limit = max(key_and_value_bytes - 1, 0)
        if topic == self.route.output_topic and limit < self.route.output_limit:
            self.route = self.route._replace(output_limit=limit)
        elif topic == self.route.dlq_topic and limit < self.route.dlq_limit:
            self.route = self.route._replace(dlq_limit=limit)
        else:
            return
        log.warning("%s refused a record of %d bytes; smaller records only from now on", topic, key_and_value_bytes)


class _Batch:
    """One batch in the child: the delivery core (login_pipeline.delivery), and kafka-python's
    futures by position, answered in order as they complete."""

    def __init__(self, limits: _LearnedLimits, producer: KafkaProducer) -> None:
        self._producer = producer
        self._limits = limits
        self.route = limits.route
        self.futures: list = []  # kafka-python's FutureRecordMetadata, or None once answered, by position
        self.answered = 0  # futures answered so far, in order
        self.delivery = BatchDelivery(self.route, self._produce)

    def _produce(
        self, topic: str, key: Optional[bytes], value: bytes, headers: Headers, partition: Optional[int], position: int
    ) -> Optional[ClientError]:
        refused: Optional[ClientError] = None
        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers, partition=partition)
        except _REFUSED_FOR_SIZE as error:  # the producer's own limit (max_request_size)
            future, refused = None, classified(error)
        if position == len(self.futures):
            self.futures.append(future)
        else:  # a rerouted record's dead-letter form takes its place
            self.futures[position] = future
        return refused

    def answer_completed(self) -> bool:
        """Answer the futures done, in order; True when every record has its answer."""
        futures = self.futures
        while self.answered < len(futures):
            future = futures[self.answered]
            if future is None:
                self.answered += 1
                continue
            if not future.is_done:
                return False
            futures[self.answered] = None
            position = self.answered
            error = None if future.succeeded() else classified(future.exception)
            if error is not None and error.kind is ErrorKind.TOO_LARGE:
                self._learn(position)
            self.delivery.answered(position, error)
            if futures[position] is None:  # not rerouted: the next one
                self.answered += 1
        return self.delivery.all_answered

    def _learn(self, position: int) -> None:
        """The record handed over at `position` was refused as too large, as a login or a dead letter."""
        if self.delivery.rerouted_at(position):
            return  # its small refused form was: nothing to learn of the record's size
        record = self.delivery.kept(position)
        route = self._limits.route
        topic = route.output_topic if record.rejection is None else route.dlq_topic
        self._limits.refused(topic, len(record.key or b"") + len(record.value or b""))


def classified(error: Exception) -> ClientError:
    """kafka-python's error, as the delivery core's kind of error."""
    if isinstance(error, _REFUSED_FOR_SIZE):
        kind = ErrorKind.TOO_LARGE
    elif isinstance(error, _REFUSED_AS_INVALID):
        kind = ErrorKind.INVALID
    elif isinstance(error, _REFUSED_US):
        kind = ErrorKind.REFUSED_US
    else:
        kind = ErrorKind.RETRIABLE
    return ClientError(kind, type(error).__name__, str(error))


def _is_broken(producer: KafkaProducer) -> bool:
    """True when the producer is in kafka-python's fatal state, from which it never sends again."""
    manager = getattr(producer, "_transaction_manager", None)  # kafka-python 3.0 keeps it private
    return bool(manager is not None and manager.has_fatal_error())


def _report_settled(connection: Connection, unreported: deque[_Batch], restarts: int) -> int:
    """Report, oldest first, every batch whose records have all been answered by the output cluster;
    the first report carries the producer restarts not yet reported. Returns those still unreported."""
    while unreported and unreported[0].answer_completed():
        connection.send(unreported.popleft().delivery.report(restarts))
        restarts = 0
    return restarts
