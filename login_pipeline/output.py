"""The output side, in a child process: produce what the run loop hands over, report when all is acknowledged.

Why a process: kafka-python spends about 30 us of Python per record inside send(), and one
interpreter holds one core. Measured under load, the single-process processor kept one core busy
while the other stood idle. Producing from a second process lets processing and producing run on
both cores; the run loop's contract is unchanged, because it commits a batch only after `flush`
here has reported that every record of the batch was acknowledged by the output cluster.

Contract of `OutputProcess`:
- Records of one `send` call are produced in the order given, after those of earlier calls.
- `flush` returns None only when every record sent since the previous flush was acknowledged
  (acks=all, idempotent producer); otherwise a one-line reason. Nothing is dropped silently.
- The child ignores SIGINT and SIGTERM (the parent decides when to stop) and exits when the parent
  closes it or disappears, so it never outlives the processor.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import struct
from multiprocessing.connection import Connection
from typing import Optional

from kafka import KafkaProducer
from kafka.errors import KafkaError

log = logging.getLogger(__name__)

_READY, _FLUSH, _CLOSE = "ready", "flush", "close"

# (offset, key, value, output partition or None, rejection) where rejection is None for the output topic,
# or (reason, field, message) for the dead-letter topic.
Record = tuple[int, Optional[bytes], Optional[bytes], Optional[int], Optional[tuple[str, Optional[str], str]]]


def keyed_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and kafka-python's) picks for a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (unsigned 32 bits), equal to kafka-python's but about 40 % faster.

    Reading whole 32-bit words with struct instead of byte by byte: measured 3.1 us against 5.4 us
    for a 36-byte user id, on the processor's busiest thread.
    """
    m = 0x5BD1E995
    length = len(data)
    h = 0x9747B28C ^ length
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra:
        if extra == 3:
            h ^= data[whole + 2] << 16
        if extra >= 2:
            h ^= data[whole + 1] << 8
        h = ((h ^ data[whole]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


class OutputProcessError(RuntimeError):
    """The output process did not start, stopped answering, or exited; str() says which."""


class OutputProcess:
    def __init__(self, producer_settings: dict, output_topic: str, dlq_topic: str, timeout: float) -> None:
        context = multiprocessing.get_context("spawn")  # no threads or sockets inherited from the parent
        self._connection, child_end = context.Pipe()
        self._timeout = timeout
        self._process = context.Process(
            target=_serve, args=(child_end, producer_settings, output_topic, dlq_topic, timeout),
            name="login-output", daemon=True)
        self._process.start()
        child_end.close()
        reply = self._receive(timeout=60)
        if not (isinstance(reply, tuple) and reply[0] == _READY):
            self.close()
            raise OutputProcessError(f"the output process did not start: {reply}")
        self.output_partitions: int = reply[1]

    def send(self, topic: str, partition: int, records: list[Record]) -> None:
        """Hand over records of one input partition; a full pipe blocks, which is the backpressure."""
        try:
            self._connection.send((topic, partition, records))
        except OSError as error:
            raise OutputProcessError(f"the output process is gone ({error})") from None

    def flush(self) -> str | None:
        """Wait until everything sent so far is acknowledged: None, or why it was not."""
        self._connection.send(_FLUSH)
        failure, self.output_partitions = self._receive(timeout=self._timeout + 30)
        return failure

    def close(self) -> None:
        try:
            self._connection.send(_CLOSE)
        except OSError:
            pass  # the child is gone already
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._connection.close()

    def _receive(self, timeout: float) -> str | None:
        if not self._connection.poll(timeout):
            raise OutputProcessError(f"the output process did not answer within {timeout:.0f} s")
        try:
            return self._connection.recv()
        except EOFError:
            raise OutputProcessError(f"the output process exited (code {self._process.exitcode})") from None


def _serve(connection: Connection, settings: dict, output_topic: str, dlq_topic: str, timeout: float) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        producer = KafkaProducer(**settings)
    except Exception as error:  # reported to the parent, which stops with it
        connection.send(f"{type(error).__name__}: {error}")
        return
    connection.send((_READY, len(producer.partitions_for(output_topic))))
    send = producer.send
    futures = []
    failure: str | None = None
    try:
        while True:
            try:
                message = connection.recv()
            except EOFError:
                return  # the parent is gone: nothing it did not see acknowledged was committed
            if message == _CLOSE:
                return
            if message == _FLUSH:
                # The partition count rides along, so keys follow when partitions are added to the topic.
                connection.send((failure or _flush(producer, futures, timeout),
                                 len(producer.partitions_for(output_topic))))
                futures, failure = [], None
                continue
            topic, partition, records = message
            source = [("source.topic", topic.encode()), ("source.partition", str(partition).encode())]
            try:
                for offset, key, value, output_partition, rejection in records:
                    headers = [*source, ("source.offset", str(offset).encode())]
                    if rejection is None:
                        futures.append(send(output_topic, value=value, key=key, headers=headers,
                                            partition=output_partition))
                        continue
                    reason, field, text = rejection
                    headers.append(("dlq.reason", reason.encode()))
                    if field is not None:
                        headers.append(("dlq.field", field.encode()))
                    headers.append(("dlq.error", text.encode()))
                    futures.append(send(dlq_topic, value=value, key=key, headers=headers))
            except KafkaError as error:
                failure = failure or f"producing failed: {type(error).__name__}"
    finally:
        producer.close(timeout=10)


def _flush(producer: KafkaProducer, futures: list, timeout: float) -> str | None:
    try:
        producer.flush(timeout=timeout)
    except KafkaError as error:
        return f"flush failed: {type(error).__name__}"
    failed = [future.exception for future in futures if not future.succeeded()]
    if failed:
        return f"{len(failed)} of {len(futures)} records were not acknowledged: {failed[0]}"
    return None
