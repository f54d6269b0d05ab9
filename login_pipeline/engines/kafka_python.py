"""The kafka-python engine (the default): a KafkaConsumer in the run loop's process, the producer in a child.

Why a child process for the producer: see login_pipeline.engines.kafka_python_output.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from kafka import AsyncConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import CommitFailedError, KafkaError, RetriableError, for_code
from kafka.structs import OffsetAndMetadata

from login_pipeline import timeouts
from login_pipeline.client import (
    AssignHandler,
    CommitAnswerHandler,
    FeedRecord,
    InputRefused,
    InputUnavailable,
    OutputGone,
    Partition,
    Polled,
    RevokeHandler,
    StartupError,
)
from login_pipeline.config import Config
from login_pipeline.engines.kafka_python_output import OutputProcess
from login_pipeline.offsets import lags
from login_pipeline.refusals import Access, Symptoms, check_topic, unreachable
from login_pipeline.routing import unknown_size_limits

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_MAX_MS = timeouts.ms(timeouts.RECONNECT_BACKOFF_MAX_S)
STARTUP_TIMEOUT_MS = timeouts.ms(timeouts.STARTUP_TIMEOUT_S)
PROBE_TIMEOUT_MS = timeouts.ms(timeouts.PROBE_TIMEOUT_S)


def connect(
    config: Config, security: dict[str, Any], size_limits: dict[str, int]
) -> tuple[KafkaPythonInput, OutputProcess]:
    """Start the output process and the consumer, the topics checked (login_pipeline.engines.connect)."""
    try:
        output = OutputProcess(
            {**producer_settings(config.output_bootstrap_servers), **security},
            config.output_topic,
            config.dlq_topic,
            timeouts.ACKNOWLEDGEMENT_TIMEOUT_S,
            size_limits,
            config.log_format,
        )
    except OutputGone as error:
        raise StartupError(str(error)) from None
    consumer = KafkaConsumer(
        **consumer_settings(config.input_bootstrap_servers, config.consumer_group, config.batch_size), **security
    )
    return KafkaPythonInput(consumer, config.input_topic), output


def client_security(config: Config) -> dict[str, Any]:
    """kafka-python settings that let a client reach a secured cluster; only the protocol for PLAINTEXT."""
    settings: dict[str, Any] = {"security_protocol": config.security_protocol}
    if config.security_protocol.startswith("SASL"):
        settings.update(
            sasl_mechanism=config.sasl_mechanism,
            sasl_plain_username=config.sasl_username,
            sasl_plain_password=config.sasl_password,
        )
    if config.ssl_cafile:
        settings["ssl_cafile"] = config.ssl_cafile
    return settings


def consumer_settings(servers, group: str, batch_size: int) -> dict:
    """The input side: manual commits only, a new group starts at the beginning, batches of batch_size."""
    return dict(
        bootstrap_servers=list(servers),
        group_id=group,
        client_id="login-processor",
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # nothing is skipped when a group starts
        max_poll_records=batch_size,
        session_timeout_ms=timeouts.ms(timeouts.SESSION_TIMEOUT_S),
        heartbeat_interval_ms=timeouts.ms(timeouts.HEARTBEAT_INTERVAL_S),
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
    )


def producer_settings(servers) -> dict:
    """The output side: every record acknowledged by all in-sync replicas, no duplicates from retries."""
    return dict(
        bootstrap_servers=list(servers),
        client_id="login-processor",
        acks="all",
        enable_idempotence=True,
        linger_ms=timeouts.ms(timeouts.LINGER_S),
        batch_size=256 * 1024,
        delivery_timeout_ms=timeouts.ms(timeouts.DELIVERY_TIMEOUT_S),
        max_block_ms=30_000,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
    )


def topic_probe(servers: tuple[str, ...], security: dict, topic: str) -> Callable[[], bool]:
    """A probe: does the cluster describe `topic` within PROBE_TIMEOUT_MS?

    The admin client is kept while the cluster answers and dropped when it does not: a fresh one
    bootstraps at once when the cluster is back, where a kept one would wait out its growing
    reconnect backoff (measured: over 10 s after a broker restart).
    """
    admin: list[KafkaAdminClient] = []

    def probe() -> bool:
        try:
            if not admin:
                admin.append(
                    KafkaAdminClient(
                        bootstrap_servers=list(servers),
                        bootstrap_timeout_ms=PROBE_TIMEOUT_MS,
                        request_timeout_ms=PROBE_TIMEOUT_MS,
                        client_id="login-processor-probe",
                        **security,
                    )
                )
            return admin[0].describe_topics([topic])[0]["error_code"] == 0
        except KafkaError:
            if admin:
                admin.pop().close()
            return False

    return probe


class KafkaPythonInput:
    """login_pipeline.client.Input over kafka-python's KafkaConsumer."""

    def __init__(self, consumer: KafkaConsumer, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic
        self._on_commit_answer: Optional[CommitAnswerHandler] = None

    def subscribe(
        self, on_revoke: RevokeHandler, on_commit_answer: CommitAnswerHandler, on_assign: AssignHandler
    ) -> None:
        self._on_commit_answer = on_commit_answer
        self._consumer.subscribe([self._topic], listener=_CommitBeforeRevoke(self._consumer, on_revoke, on_assign))

    def poll(self, timeout_s: float) -> list[Polled]:
        try:
            batch = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        except RetriableError as error:
            raise InputUnavailable(type(error).__name__) from None
        except KafkaError as error:  # not retriable: authorization, a deleted topic, a fenced member...
            raise InputRefused(f"{type(error).__name__}: {error}") from None
        return [
            Polled(
                Partition(tp.topic, tp.partition),
                [m.offset for m in messages],
                [m.key for m in messages],
                [m.value for m in messages],
            )
            for tp, messages in batch.items()
        ]

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(TopicPartition(*partition), offset)

    def commit_in_background(self, offsets: dict[Partition, int]) -> None:
        self._consumer.commit_async(_kafka_offsets(offsets), callback=self._commit_answered)

    def _commit_answered(self, _offsets, response) -> None:
        if self._on_commit_answer is not None:
            self._on_commit_answer(type(response).__name__ if isinstance(response, Exception) else None)

    def commit(self, offsets: dict[Partition, int], timeout_s: float) -> bool:
        try:
            self._consumer.commit(offsets=_kafka_offsets(offsets), timeout_ms=int(timeout_s * 1000))
            return True
        except CommitFailedError:
            # The group rebalanced away from us; the new owner resumes from the last committed offsets.
            log.warning(
                "commit rejected after a rebalance; the new owner will repeat what %d partitions had uncommitted",
                len(offsets),
            )
        except KafkaError as error:
            log.warning("commit failed (%s)", type(error).__name__)
        return False

    def assignment(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def lag(self, positions: dict[Partition, int]) -> Optional[dict[Partition, int]]:
        highwaters = {
            Partition(tp.topic, tp.partition): self._consumer.highwater(tp) for tp in self._consumer.assignment()
        }
        return lags(highwaters, positions)

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=timeouts.ms(timeouts.CLOSE_TIMEOUT_S))


class _CommitBeforeRevoke(AsyncConsumerRebalanceListener):
    """Nothing acknowledged from a partition stays uncommitted when it is revoked.

    The consumer runs this on its IO thread while the run loop waits inside poll or close, so it
    never races the loop. Async, because only an awaited commit can be made from that thread, and
    awaiting it lets heartbeats go on meanwhile.
    """

    def __init__(self, consumer: KafkaConsumer, on_revoke: RevokeHandler, on_assign: AssignHandler) -> None:
        self._consumer = consumer
        self._on_revoke = on_revoke
        self._on_assign = on_assign

    async def on_partitions_revoked(self, revoked) -> None:
        offsets = self._on_revoke({Partition(tp.topic, tp.partition) for tp in revoked})
        if not offsets:
            return
        try:
            await self._consumer.commit_async(_kafka_offsets(offsets))
        except KafkaError as error:
            log.warning(
                "commit before a rebalance failed (%s); the new owner will repeat what %d partitions had uncommitted",
                type(error).__name__,
                len(offsets),
            )

    async def on_partitions_assigned(self, assigned) -> None:
        self._on_assign({Partition(tp.topic, tp.partition) for tp in assigned})


def _kafka_offsets(offsets: dict[Partition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(*partition): OffsetAndMetadata(offset, "", -1) for partition, offset in offsets.items()}


def check_topics(where: Access, security: dict, topics: list[str], needed: str) -> dict[str, int]:
    """Fail fast, with one line, unless the cluster answers and `needed` is allowed on every topic.

    Returns each topic's max.message.bytes where the cluster tells it (DescribeConfigs), so records
    too large for a topic are known before they are sent; only asked where records are written.
    """
    with Symptoms().collected_from(logging.getLogger("kafka")) as symptoms:
        try:
            with KafkaAdminClient(
                bootstrap_servers=where.servers.split(","),
                bootstrap_timeout_ms=STARTUP_TIMEOUT_MS,
                request_timeout_ms=STARTUP_TIMEOUT_MS,
                **security,
            ) as admin:
                for topic in admin.describe_topics(topics):
                    error = None if topic["error_code"] == 0 else for_code(topic["error_code"]).message
                    allowed = topic.get("authorized_operations")
                    check_topic(where, topic["name"], error, None if allowed is None else set(allowed), needed)
                return _size_limits(admin, topics) if needed == "WRITE" else {}
        except KafkaError as error:
            raise unreachable(where, symptoms.newest_first(), type(error).__name__) from None


def _size_limits(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None}) for topic in topics],
            config_filter="all",
        )
        return {
            topic: int(configs["max.message.bytes"]["value"])
            for topic, configs in described.get("topic", {}).items()
            if "max.message.bytes" in configs
        }
    except KafkaError as error:
        return unknown_size_limits(topics, error)


PUBLISH_BLOCK_MS = 1_000  # the longest a publish may hold the run loop while the output cluster is unknown


class KafkaPythonPublisher:
    """login_pipeline.client.Publisher: a KafkaProducer in the run loop's process (a record a minute
    and the odd alert: too few to be worth the output process's pickling)."""

    def __init__(self, servers: tuple[str, ...], security: dict[str, Any]) -> None:
        settings = {**producer_settings(servers), "max_block_ms": PUBLISH_BLOCK_MS, "linger_ms": 0, **security}
        self._producer = KafkaProducer(**settings)
        self._lock = threading.Lock()
        self._pending = 0
        self.failed = 0

    def publish(self, topic: str, key: bytes, value: bytes) -> bool:
        try:
            future = self._producer.send(topic, key=key, value=value)
        except KafkaError as error:
            self._settled(topic, error, queued=False)
            return False
        with self._lock:
            self._pending += 1
        future.add_callback(lambda _metadata: self._settled(topic, None))
        future.add_errback(lambda error: self._settled(topic, error))
        return True

    def _settled(self, topic: str, error: Optional[Exception], queued: bool = True) -> None:
        with self._lock:
            self._pending -= queued
            if error is not None:
                self.failed += 1
        if error is not None:
            log.error("a record for %s was not published: %s", topic, type(error).__name__)

    def flush(self, timeout_s: float) -> int:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError:
            pass  # what is still pending says how much
        with self._lock:
            return self._pending

    def close(self) -> None:
        self._producer.close(timeout=5)


class KafkaPythonFeed:
    """login_pipeline.client.Feed: a KafkaConsumer with no group, assigned every partition of `topics`,
    each starting at its first record stamped at or after `since_s` (epoch seconds)."""

    def __init__(self, servers: tuple[str, ...], security: dict[str, Any], topics: list[str], since_s: float) -> None:
        self._settings = dict(
            bootstrap_servers=list(servers),
            group_id=None,
            client_id="login-processor-feed",
            enable_auto_commit=False,
            request_timeout_ms=10_000,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            **security,
        )
        self._topics = topics
        self._since_ms = int(since_s * 1000)
        self._consumer: Optional[KafkaConsumer] = None

    def poll(self, timeout_s: float) -> list[FeedRecord]:
        try:
            if self._consumer is None:
                self._consumer = self._assigned()
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        except KafkaError as error:
            log.warning("reading %s failed (%s); trying again", ", ".join(self._topics), type(error).__name__)
            self.close()
            time.sleep(timeout_s)
            return []
        return [
            FeedRecord(part.topic, part.partition, record.offset, record.value)
            for part, records in polled.items()
            for record in records
        ]

    def _assigned(self) -> KafkaConsumer:
        consumer = KafkaConsumer(**self._settings)
        try:
            partitions = [
                TopicPartition(topic, number)
                for topic in self._topics
                for number in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            consumer.assign(partitions)
            starts = consumer.offsets_for_times(dict.fromkeys(partitions, self._since_ms))
            for partition in partitions:
                found = starts.get(partition)
                if found is None:
                    consumer.seek_to_end(partition)
                else:
                    consumer.seek(partition, found.offset)
        except Exception:
            consumer.close()
            raise
        return consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


# What login_pipeline.engines.live_publisher and live_feed build with this engine.
Publisher = KafkaPythonPublisher
Feed = KafkaPythonFeed
