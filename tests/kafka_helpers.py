"""Small, bounded helpers the integration tests use to set up topics and read back what landed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from local_kafka.brokers import PROJECT_DIR, Cluster, Pair, create_topics, grant, unique_name
from local_kafka.secure import PROCESSOR, processor_grants, producer_grants, reader_grants

# Runs a test on the plain pair and on the secured one (SASL_SSL, SCRAM, ACLs), as `kafka`.
on_both_pairs = pytest.mark.parametrize("kafka", ["plaintext", "sasl_ssl"], indirect=True)


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @property
    def source(self) -> tuple[int, int]:
        """The input (partition, offset) this output or dead-letter record says it came from."""
        return int(self.headers["source.partition"]), int(self.headers["source.offset"])


def partition_counts(cluster: Cluster) -> dict[str, int]:
    with KafkaAdminClient(**cluster.client_settings(), request_timeout_ms=30000) as admin:
        return {topic["name"]: len(topic["partitions"]) for topic in admin.describe_topics()}


def produce(
    cluster: Cluster, topic: str, values: Iterable[bytes], partition: int | None = None, key: bytes | None = None
) -> int:
    producer = KafkaProducer(**cluster.client_settings(), linger_ms=5)
    try:
        count = 0
        for value in values:
            producer.send(topic, value, key=key, partition=partition)
            count += 1
        producer.flush(timeout=60)
        return count
    finally:
        producer.close(timeout=10)


def end_offsets(cluster: Cluster, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(**cluster.client_settings(), enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def committed_offsets(cluster: Cluster, topic: str, group: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(**cluster.client_settings(), group_id=group, enable_auto_commit=False)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()


def read_all(cluster: Cluster, topic: str, timeout: float = 60.0) -> list[Record]:
    """Every record now in the topic, from the beginning up to the end offsets taken at the start."""
    consumer = KafkaConsumer(**cluster.client_settings(), enable_auto_commit=False, max_poll_records=5000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(records)} records of {topic}, end offsets {ends}, in {timeout} s")
            for tp, batch in consumer.poll(timeout_ms=500).items():
                records.extend(
                    Record(m.partition, m.offset, m.key, m.value, {k: v for k, v in m.headers})
                    for m in batch
                    if m.offset < ends[tp]
                )
        return records
    finally:
        consumer.close()


def wait_until(condition, timeout: float, interval: float = 0.2, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout} s")
        time.sleep(interval)


TEST_PII_KEY = "integration-test-key-0123456789"


@dataclass(frozen=True)
class Topics:
    """One test's own topics and consumer group, so tests sharing the session's clusters never meet."""

    input: str
    output: str
    dlq: str
    group: str
    insights: str
    alerts: str

    @classmethod
    def create(cls, kafka: Pair, partitions: int = 3, acls: bool = True) -> Topics:
        """New topics; on a secured pair the processor's user gets exactly the README's ACLs on them
        (unless `acls` is False: then it has none)."""
        topics = cls(
            unique_name("user-login"),
            unique_name("processed-logins"),
            unique_name("user-login-dlq"),
            unique_name("group"),
            unique_name("login-insights"),
            unique_name("login-alerts"),
        )
        create_topics(kafka.input, partitions, topics.input)
        create_topics(kafka.output, partitions, topics.output, topics.dlq)
        create_topics(kafka.output, 1, topics.insights, topics.alerts)
        if kafka.input.security is not None and acls:
            grant(kafka.input, *processor_grants(PROCESSOR, topics.input, topics.group))
            grant(kafka.output, *topics.output_grants())
        return topics

    def output_grants(self) -> tuple:
        """The README's output-cluster ACLs for the processor, on these topics."""
        return producer_grants(PROCESSOR, self.output, self.dlq, self.insights, self.alerts) + reader_grants(
            PROCESSOR, self.insights, self.alerts
        )


class Processor:
    """kafka_consumer_processor.py as a child process on a test's topics; always stopped on exit."""

    def __init__(
        self, kafka: Pair, topics: Topics, workdir: Path, engine: str = "kafka-python", **settings: str
    ) -> None:
        """On a secured pair it runs as the `processor` user, with the settings a user puts in .env."""
        security = kafka.input.security
        self.env = {
            **os.environ,
            **(security.processor_environment(PROCESSOR) if security else {}),
            "INPUT_BOOTSTRAP_SERVERS": kafka.input.bootstrap,
            "OUTPUT_BOOTSTRAP_SERVERS": kafka.output.bootstrap,
            "INPUT_TOPIC": topics.input,
            "OUTPUT_TOPIC": topics.output,
            "DLQ_TOPIC": topics.dlq,
            "INSIGHTS_TOPIC": topics.insights,
            "ALERTS_TOPIC": topics.alerts,
            "CONSUMER_GROUP": topics.group,
            "PII_HASH_KEY": TEST_PII_KEY,
            "KAFKA_CLIENT": engine,
            "METRICS_PORT": "0",  # several processors may run at once; a test that scrapes sets a free port
            **settings,
        }
        self.workdir = workdir
        self.runs = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> Processor:
        self.runs += 1
        self.stdout_path = self.workdir / f"processor-{self.runs}.out"
        self.stderr_path = self.workdir / f"processor-{self.runs}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(PROJECT_DIR / "kafka_consumer_processor.py"), "--env-file", "/dev/null"],
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=err,
            )
        return self

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.send_signal(signum)
        return self.wait(timeout)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def __enter__(self) -> Processor:
        """Each `with` is one run of the processor; the same object can run again after it."""
        return self.start()

    def __exit__(self, exc_type=None, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if exc_type is not None and self.process is not None:
            # The processor's own account is what tells a stall from a slow broker: show its last lines.
            noise = ("kafka.net", "kafka.cluster")
            lines = [line for line in self.stderr.splitlines() if not any(name in line for name in noise)]
            print(f"--- {self.stderr_path.name}, last lines (the client's own connection noise left out):")
            print("\n".join(lines[-40:]))


def caught_up(kafka, topics: Topics) -> bool:
    """True once the group has committed every input partition up to its end offset."""
    ends = end_offsets(kafka.input, topics.input)
    committed = committed_offsets(kafka.input, topics.input, topics.group)
    return {partition: offset or 0 for partition, offset in committed.items()} == ends


@dataclass(frozen=True)
class Delivery:
    """What the output and dead-letter topics hold, compared with what the input topic holds."""

    inputs: dict[tuple[int, int], Record]
    outputs: list[Record]
    dead_letters: list[Record]

    @property
    def landed(self) -> Counter:
        """How often each input (partition, offset) landed, in the output or the DLQ."""
        return Counter(r.source for r in self.outputs + self.dead_letters)

    @property
    def lost(self) -> list[tuple[int, int]]:
        return sorted(set(self.inputs) - set(self.landed))

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.landed.values())

    def input_of(self, record: Record) -> Record:
        return self.inputs[record.source]

    def dlq_bytes_match(self) -> bool:
        """Every dead letter holds its input's exact bytes, or says precisely why it cannot."""
        return all(dead_letter_matches(self.input_of(r), r) for r in self.dead_letters)


def dead_letter_matches(source: Record, dead_letter: Record) -> bool:
    headers = dead_letter.headers
    if "dlq.value_bytes" in headers:  # refused by the output cluster, even as a dead letter: the value is left out
        expected_size = b"null" if source.value is None else str(len(source.value)).encode()
        return dead_letter.value == b"" and headers["dlq.value_bytes"] == expected_size
    if source.value is None:  # Kafka refuses a record with neither key nor value: flagged, empty
        return dead_letter.value == b"" and headers.get("dlq.null_value") == b"true"
    return dead_letter.value == source.value and "dlq.null_value" not in headers


def delivery(kafka, topics: Topics) -> Delivery:
    inputs = {(r.partition, r.offset): r for r in read_all(kafka.input, topics.input)}
    return Delivery(inputs, read_all(kafka.output, topics.output), read_all(kafka.output, topics.dlq))
