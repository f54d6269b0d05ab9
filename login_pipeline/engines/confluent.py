"""The confluent-kafka engine (librdkafka): chosen with KAFKA_CLIENT=confluent-kafka.

Designed for librdkafka rather than translated from the kafka-python engine: its producer already
batches, compresses and sends on its own C threads, so it runs in the run loop's process, with no
child process and no pickling. Delivery reports, served by `poll`, answer the delivery core
(login_pipeline.delivery), which decides what becomes of each record; a record is keyed by user id
and partitioned by librdkafka's `murmur2_random`, the Java client's rule, so a user's records land
where the kafka-python engine puts them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from functools import partial
from typing import Any, Callable, Optional, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from login_pipeline import timeouts
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
from login_pipeline.config import Config
from login_pipeline.delivery import BatchDelivery, ClientError, ErrorKind, Route, route_of
from login_pipeline.offsets import lags
from login_pipeline.refusals import Access, Symptoms, check_topic, unreachable
from login_pipeline.routing import DEFAULT_MAX_REQUEST_SIZE, Headers, effective_limits, unknown_size_limits

log = logging.getLogger(__name__)
client_log = logging.getLogger("librdkafka")

ACK_POLL_INTERVAL_S = 0.005
LIBRDKAFKA_BATCH_BYTES = 1_000_000  # librdkafka's default batch.size
# Refused for what the record is: retrying it would stall its partition.
_REFUSED_FOR_SIZE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG_SIZE}
_REFUSED_AS_INVALID = {KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG}
# The cluster refuses the pipeline itself: stop with one line rather than retry forever.
_REFUSALS = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
}


def connect(
    config: Config, security: dict[str, Any], size_limits: dict[str, int]
) -> tuple[ConfluentInput, ConfluentOutput]:
    """Start the producer and the consumer, the topics checked (login_pipeline.engines.connect)."""
    output = ConfluentOutput(
        {**producer_settings(config.output_bootstrap_servers), **security},
        config.output_topic,
        config.dlq_topic,
        timeouts.ACKNOWLEDGEMENT_TIMEOUT_S,
        size_limits,
    )
    consumer = ConfluentInput(
        consumer_settings(config.input_bootstrap_servers, config.consumer_group, security),
        config.input_topic,
        config.batch_size,
    )
    return consumer, output


def client_security(config: Config) -> dict[str, Any]:
    """librdkafka's names for the security settings."""
    settings: dict[str, Any] = {"security.protocol": config.security_protocol}
    if config.security_protocol.startswith("SASL"):
        settings.update(
            {
                "sasl.mechanism": config.sasl_mechanism,
                "sasl.username": config.sasl_username,
                "sasl.password": config.sasl_password,
            }
        )
    if config.ssl_cafile:
        settings["ssl.ca.location"] = config.ssl_cafile
    return settings


def consumer_settings(servers, group: str, security: dict) -> dict[str, Any]:
    """The input side: manual commits only, a new group starts at the beginning, eager rebalances."""
    return {
        "bootstrap.servers": ",".join(servers),
        "group.id": group,
        "client.id": "login-processor",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",  # nothing is skipped when a group starts
        "session.timeout.ms": timeouts.ms(timeouts.SESSION_TIMEOUT_S),
        "heartbeat.interval.ms": timeouts.ms(timeouts.HEARTBEAT_INTERVAL_S),
        # Eager, as the kafka-python engine: every partition is revoked, settled and committed at once.
        "partition.assignment.strategy": "range",
        "reconnect.backoff.max.ms": timeouts.ms(timeouts.RECONNECT_BACKOFF_MAX_S),
        "logger": client_log,
        **security,
    }


def producer_settings(servers) -> dict[str, Any]:
    """The output side: every record acknowledged by all in-sync replicas, no duplicates from retries."""
    return {
        "bootstrap.servers": ",".join(servers),
        "client.id": "login-processor",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": timeouts.ms(timeouts.LINGER_S),
        "delivery.timeout.ms": timeouts.ms(timeouts.DELIVERY_TIMEOUT_S),
        "message.max.bytes": DEFAULT_MAX_REQUEST_SIZE,  # librdkafka's default is 1,000,000; Kafka's is 1 MiB
        "partitioner": "murmur2_random",  # Java's rule for keyed records
        "reconnect.backoff.max.ms": timeouts.ms(timeouts.RECONNECT_BACKOFF_MAX_S),
        "logger": client_log,
    }


def check_topics(where: Access, security: dict, topics: list[str], needed: str) -> dict[str, int]:
    """Fail fast, with one line, unless the cluster answers and `needed` is allowed on every topic.

    Returns the topics' max.message.bytes where records are written (`needed` WRITE).
    """
    symptoms = Symptoms()  # librdkafka's logs and error callbacks: the reasons behind a timeout
    startup_log = logging.getLogger("librdkafka.startup")
    startup_log.propagate = False
    startup_log.handlers = [symptoms]
    startup_log.setLevel(logging.INFO)  # librdkafka says why a connection failed at INFO
    settings: dict[str, Any] = {
        "bootstrap.servers": where.servers,
        "logger": startup_log,
        "error_cb": lambda error: symptoms.note(error.str()),
        **security,
    }
    admin = AdminClient(settings)
    futures = admin.describe_topics(
        TopicCollection(topics), include_authorized_operations=True, request_timeout=timeouts.STARTUP_TIMEOUT_S
    )
    for topic, future in futures.items():
        try:
            described = future.result(timeout=timeouts.STARTUP_TIMEOUT_S + 1)
        except KafkaException as raised:
            error = raised.args[0]
            if error.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.UNKNOWN_TOPIC_OR_PART):
                check_topic(where, topic, error.name(), None, needed)
            admin.poll(0)  # serves the error callbacks that say why
            raise unreachable(where, symptoms.newest_first(), error.name()) from None
        except Exception as error:  # the future's own timeout: nothing answered
            admin.poll(0)
            raise unreachable(where, symptoms.newest_first(), type(error).__name__) from None
        allowed = {operation.name for operation in described.authorized_operations or ()}
        check_topic(where, topic, None, allowed or None, needed)
    if needed != "WRITE":
        return {}
    try:
        configs = admin.describe_configs(
            [ConfigResource(ConfigResource.Type.TOPIC, topic) for topic in topics],
            request_timeout=timeouts.STARTUP_TIMEOUT_S,
        )
        return {
            resource.name: int(future.result(timeout=timeouts.STARTUP_TIMEOUT_S)["max.message.bytes"].value)
            for resource, future in configs.items()
        }
    except Exception as error:
        return unknown_size_limits(topics, error)


def topic_probe(servers: tuple[str, ...], security: dict, topic: str) -> Callable[[], bool]:
    """A probe: does the cluster return `topic`'s metadata within timeouts.PROBE_TIMEOUT_S? One admin client, kept."""
    settings: dict[str, Any] = {"bootstrap.servers": ",".join(servers), "logger": client_log, **security}
    admin = AdminClient(settings)

    def probe() -> bool:
        try:
            metadata = admin.list_topics(topic=topic, timeout=timeouts.PROBE_TIMEOUT_S)
        except KafkaException:
            return False
        return topic in metadata.topics and metadata.topics[topic].error is None

    return probe


class ConfluentInput:
    """login_pipeline.client.Input over confluent-kafka's Consumer."""

    def __init__(self, settings: dict, topic: str, batch_size: int) -> None:
        self._topic = topic
        self._batch_size = batch_size
        self._on_revoke: RevokeHandler = _not_subscribed
        self._on_commit_answer: CommitAnswerHandler = _not_subscribed
        self._on_assign: AssignHandler = _not_subscribed
        self._consumer = Consumer({**settings, "on_commit": self._commit_answered})

    def subscribe(
        self, on_revoke: RevokeHandler, on_commit_answer: CommitAnswerHandler, on_assign: AssignHandler
    ) -> None:
        self._on_revoke, self._on_commit_answer, self._on_assign = on_revoke, on_commit_answer, on_assign
        self._consumer.subscribe([self._topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Returning without assign() lets the client apply this assignment as it is.
        self._on_assign({Partition(tp.topic, tp.partition) for tp in partitions})

    def poll(self, timeout_s: float) -> list[Polled]:
        try:
            # What is already fetched, at once; else wait for the first record only. consume() with a
            # timeout would wait for a whole batch: measured 286 ms p50 latency at 1,000 msg/s.
            messages = self._consumer.consume(num_messages=self._batch_size, timeout=0)
            if not messages:
                first = self._consumer.poll(timeout_s)
                if first is None:
                    return []
                messages = [first, *self._consumer.consume(num_messages=self._batch_size - 1, timeout=0)]
        except KafkaException as raised:
            raise self._classify(raised.args[0]) from None
        polled: dict[int, Polled] = {}
        part = None
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal() or error.code() in _REFUSALS:
                    raise InputRefused(f"{error.name()}: {error.str()}")
                log.warning("the input cluster reported %s; librdkafka retries by itself", error.name())
                continue
            # One topic is subscribed, and a poll returns each partition's records in a run: the
            # partition is looked up only where a run starts.
            number = cast(int, message.partition())  # set on every record without an error
            if part is None or number != part.partition.partition:
                part = polled.get(number)
                if part is None:
                    part = polled[number] = Polled(Partition(self._topic, number), [], [], [])
            part.offsets.append(cast(int, message.offset()))
            part.keys.append(message.key())
            part.values.append(message.value())
        return list(polled.values())

    @staticmethod
    def _classify(error: KafkaError) -> Exception:
        if error.fatal() or error.code() in _REFUSALS:
            return InputRefused(f"{error.name()}: {error.str()}")
        return InputUnavailable(error.name())

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        offsets = self._on_revoke({Partition(tp.topic, tp.partition) for tp in partitions})
        if offsets:
            try:
                consumer.commit(offsets=_confluent_offsets(offsets), asynchronous=False)
            except KafkaException as error:
                log.warning(
                    "commit before a rebalance failed (%s); the new owner will repeat what %d partitions "
                    "had uncommitted",
                    error.args[0].name(),
                    len(offsets),
                )

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked (the session expired): a commit would be refused; settle, commit nothing.
        self._on_revoke({Partition(tp.topic, tp.partition) for tp in partitions})

    def seek(self, partition: Partition, offset: int) -> None:
        try:
            self._consumer.seek(TopicPartition(partition.topic, partition.partition, offset))
        except KafkaException as error:
            # Going on without the rewind would skip the failed records: stop instead, nothing committed past them.
            raise InputRefused(
                f"could not rewind {partition.topic}:{partition.partition} to {offset} ({error.args[0].name()})"
            ) from None

    def commit_in_background(self, offsets: dict[Partition, int]) -> None:
        try:
            self._consumer.commit(offsets=_confluent_offsets(offsets), asynchronous=True)
        except KafkaException as error:
            self._on_commit_answer(error.args[0].name())

    def _commit_answered(self, error: Optional[KafkaError], partitions: list[TopicPartition]) -> None:
        failed = error.name() if error is not None else next((tp.error.name() for tp in partitions if tp.error), None)
        self._on_commit_answer(failed)

    def commit(self, offsets: dict[Partition, int], timeout_s: float) -> bool:
        try:
            answered = self._consumer.commit(offsets=_confluent_offsets(offsets), asynchronous=False)
        except KafkaException as error:
            log.warning("commit failed (%s)", error.args[0].name())
            return False
        return not any(tp.error for tp in answered or ())

    def assignment(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def lag(self, positions: dict[Partition, int]) -> Optional[dict[Partition, int]]:
        highwaters = {}
        for tp in self._consumer.assignment():
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            highwaters[Partition(tp.topic, tp.partition)] = high if high is not None and high >= 0 else None
        return lags(highwaters, positions)

    def close(self) -> None:
        self._consumer.close()  # revokes: the handler settles and commits what was acknowledged


def _not_subscribed(*_args: object) -> Any:
    raise RuntimeError("subscribe() first")


def _confluent_offsets(offsets: dict[Partition, int]) -> list[TopicPartition]:
    return [TopicPartition(partition.topic, partition.partition, offset) for partition, offset in offsets.items()]


# After a refused record whose place in its batch was not known, this many batches are produced
# with a delivery callback per record, so that when the failed batch is produced again the record
# is rerouted: the failed one and those in flight behind it, with room to spare.
PRECISE_BATCHES_AFTER_REFUSAL = 8


class _Batch:
    """One batch: the delivery core (login_pipeline.delivery), and how its records are produced and
    answered with this batch's producer.

    Usually one delivery callback serves the whole batch (its bound `_delivered`): a callable per
    record, a partial carrying its position, held by librdkafka until the record's report, raised
    the cost of producing a record from 2.0 to 2.9-3.0 us (timeit, 60,000 records, the collector
    tuned as in production). A failure then says nothing of where the record was (librdkafka's
    report of a failed record carries no headers), which matters only for a record refused for
    what it is: that batch fails (the core's rule), `on_unplaced` is told, and the batches produced
    next are `precise`, with a callback per record, so the retried batch reroutes the record.
    """

    __slots__ = ("delivery", "_producer", "_send", "_precise", "_on_delivery", "_on_unplaced")

    def __init__(self, route: Route, producer: Producer, precise: bool, on_unplaced: Callable[[], None]) -> None:
        self._producer = producer
        self._send = producer.produce
        self._precise = precise
        self._on_delivery = self._delivered  # bound once, not per record
        self._on_unplaced = on_unplaced
        self.delivery = BatchDelivery(route, self._produce)

    def _produce(
        self, topic: str, key: Optional[bytes], value: bytes, headers: Headers, partition: Optional[int], position: int
    ) -> Optional[ClientError]:
        on_delivery = partial(self._delivered_at, position) if self._precise else self._on_delivery
        while True:
            try:
                # A list of (str, bytes) pairs is what librdkafka takes; its stubs say a wider type.
                self._send(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)  # type: ignore[arg-type]
                return None
            except BufferError:
                self._producer.poll(0.05)  # the local queue is full: this is the backpressure
            except KafkaException as error:
                return classified(error.args[0])

    def _delivered(self, error: Optional[KafkaError], _message) -> None:
        if error is None:
            self.delivery.acknowledged()
            return
        refusal = classified(error)
        if refusal.kind.refuses_the_record:
            self._on_unplaced()
        self.delivery.answered(None, refusal)

    def _delivered_at(self, position: int, error: Optional[KafkaError], _message) -> None:
        self.delivery.answered(position, None if error is None else classified(error))


def classified(error: KafkaError) -> ClientError:
    """librdkafka's error, as the delivery core's kind of error."""
    code = error.code()
    if code in _REFUSED_FOR_SIZE:
        kind = ErrorKind.TOO_LARGE
    elif code in _REFUSED_AS_INVALID:
        kind = ErrorKind.INVALID
    elif code in _REFUSALS:
        kind = ErrorKind.REFUSED_US
    else:
        kind = ErrorKind.RETRIABLE
    return ClientError(kind, error.name(), error.str())


class ConfluentOutput:
    """login_pipeline.client.Output over confluent-kafka's Producer, in this process."""

    def __init__(
        self, settings: dict, output_topic: str, dlq_topic: str, timeout_s: float, size_limits: dict[str, int]
    ) -> None:
        self.size_limits = effective_limits(
            size_limits, (output_topic, dlq_topic), settings.get("message.max.bytes", DEFAULT_MAX_REQUEST_SIZE)
        )
        self._route = route_of(output_topic, dlq_topic, self.size_limits)
        # librdkafka does not split a batch the broker refuses as too large (Java and kafka-python do):
        # every record in it would fail. So no batch is built larger than the smallest topic takes.
        batch_bytes = min(LIBRDKAFKA_BATCH_BYTES, *self.size_limits.values())
        self._settings = {**settings, "batch.size": batch_bytes, "error_cb": self._client_error}
        self._producer = Producer(self._settings)
        self._timeout_s = timeout_s
        self._precise_batches = 0  # batches still to produce with a callback per record
        self._batch = self._new_batch()
        self._closed: deque[BatchDelivery] = deque()
        self._fatal: Optional[str] = None
        self._refusal: Optional[str] = None  # the cluster refused the producer itself (no idempotence ACL...)
        self._restarts = 0  # producers replaced since the last report

    def _client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error.name()
            if error.code() in _REFUSALS:
                self._refusal = f"{error.name()}: {error.str()[:200]}"
            log.error(
                "the producer stopped after a fatal error (%s); a new one takes over at the next batch", error.name()
            )

    def send(self, records: HandOver) -> None:
        self._batch.delivery.send(records)
        self._producer.poll(0)  # serve delivery reports as they come, so the queue never fills with them

    def end_batch(self) -> None:
        self._closed.append(self._batch.delivery)
        if self._fatal is not None:
            self._replace_producer()
        self._batch = self._new_batch()

    def _new_batch(self) -> _Batch:
        precise = self._precise_batches > 0
        self._precise_batches = max(self._precise_batches - 1, 0)
        return _Batch(self._route, self._producer, precise, self._refused_unplaced)

    def _refused_unplaced(self) -> None:
        self._precise_batches = PRECISE_BATCHES_AFTER_REFUSAL
        if self._batch.delivery.records == 0:  # the open batch has nothing yet: it is the one that retries
            self._batch = self._new_batch()

    def _replace_producer(self) -> None:
        """A producer in librdkafka's fatal state never sends again: fail what it holds, start a new one."""
        self._producer.purge()
        self._producer.flush(5)  # delivers the purge reports: their batches fail and are retried
        self._producer = Producer(self._settings)
        self._fatal = None
        self._restarts += 1

    def acknowledgement(self, timeout_s: Optional[float] = None) -> Optional[BatchReport]:
        deadline = time.monotonic() + (self._timeout_s if timeout_s is None else timeout_s)
        while not self._closed or not self._closed[0].all_answered:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if timeout_s is None:
                    raise OutputGone(f"the output cluster did not answer within {self._timeout_s:.0f} s")
                return None
            self._producer.poll(min(remaining, ACK_POLL_INTERVAL_S))
        batch = self._closed.popleft()
        restarts, self._restarts = self._restarts, 0
        if self._refusal is not None:
            return BatchReport(self._refusal, refused=True, producer_restarts=restarts)
        return batch.report(restarts)

    def alive(self) -> bool:
        return True  # in this process: it lives as long as the run loop

    def close(self) -> None:
        try:
            self._producer.flush(10)
        except KafkaException as error:  # a producer in the fatal state refuses even to flush
            log.warning("the producer could not flush on close (%s)", error.args[0].name())


PUBLISH_BLOCK_S = 1.0


class ConfluentPublisher:
    """login_pipeline.client.Publisher: a librdkafka producer of its own, beside the output's."""

    def __init__(self, servers: tuple[str, ...], security: dict[str, Any]) -> None:
        self._producer = Producer({**producer_settings(servers), "linger.ms": 0, **security})
        self.failed = 0

    def publish(self, topic: str, key: bytes, value: bytes) -> bool:
        try:
            self._producer.produce(topic, value, key, on_delivery=self._delivered)
        except (BufferError, KafkaException) as error:
            self.failed += 1
            log.error("a record for %s was not published: %s", topic, type(error).__name__)
            return False
        self._producer.poll(0)  # serves earlier delivery reports
        return True

    def _delivered(self, error: Optional[KafkaError], message) -> None:
        if error is not None:
            self.failed += 1
            log.error("a record for %s was not published: %s", message.topic(), error.name())

    def flush(self, timeout_s: float) -> int:
        return self._producer.flush(timeout_s)

    def close(self) -> None:
        self._producer.flush(5.0)


class ConfluentFeed:
    """login_pipeline.client.Feed: a consumer assigned every partition of `topics`, each starting at its
    first record stamped at or after `since_s`. librdkafka wants a group.id; this one never joins
    or commits (assign, not subscribe), so it needs no group ACL."""

    def __init__(self, servers: tuple[str, ...], security: dict[str, Any], topics: list[str], since_s: float) -> None:
        self._settings = {
            "bootstrap.servers": ",".join(servers),
            "group.id": "login-processor-feed",
            "client.id": "login-processor-feed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "logger": client_log,
            **security,
        }
        self._topics = topics
        self._since_ms = int(since_s * 1000)
        self._consumer: Optional[Consumer] = None

    def poll(self, timeout_s: float) -> list[FeedRecord]:
        try:
            if self._consumer is None:
                self._consumer = self._assigned(timeout_s)
            messages = self._consumer.consume(500, timeout_s)
        except KafkaException as error:
            log.warning("reading %s failed (%s); trying again", ", ".join(self._topics), error.args[0].name())
            self.close()
            time.sleep(timeout_s)
            return []
        return [
            FeedRecord(
                cast(str, message.topic()), cast(int, message.partition()), cast(int, message.offset()), message.value()
            )
            for message in messages
            if message.error() is None
        ]

    def _assigned(self, timeout_s: float) -> Consumer:
        consumer = Consumer(self._settings)
        try:
            metadata = consumer.list_topics(timeout=max(timeout_s, 5.0))
            wanted = [
                TopicPartition(topic, number, self._since_ms)
                for topic in self._topics
                if topic in metadata.topics
                for number in sorted(metadata.topics[topic].partitions)
            ]
            starts = consumer.offsets_for_times(wanted, timeout=max(timeout_s, 5.0)) if wanted else []
            # No record at or after the time: start at the end (-1, librdkafka's OFFSET_END).
            consumer.assign([TopicPartition(s.topic, s.partition, s.offset if s.offset >= 0 else -1) for s in starts])
        except Exception:
            consumer.close()
            raise
        return consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


# What login_pipeline.engines.live_publisher and live_feed build with this engine.
Publisher = ConfluentPublisher
Feed = ConfluentFeed
