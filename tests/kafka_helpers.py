"""Small, bounded helpers the integration tests use to set up topics and read back what landed."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def create_topics(bootstrap: str, partitions: int, *names: str) -> None:
    with KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000) as admin:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1} for name in names},
                            timeout_ms=30000, wait_for_metadata=True)


def partition_counts(bootstrap: str) -> dict[str, int]:
    with KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000) as admin:
        return {topic["name"]: len(topic["partitions"]) for topic in admin.describe_topics()}


def produce(bootstrap: str, topic: str, values: Iterable[bytes], partition: int | None = None,
            key: bytes | None = None) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        count = 0
        for value in values:
            producer.send(topic, value, key=key, partition=partition)
            count += 1
        producer.flush(timeout=60)
        return count
    finally:
        producer.close(timeout=10)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Record]:
    """Every record now in the topic, from the beginning up to the end offsets taken at the start."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000)
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
                    for m in batch if m.offset < ends[tp]
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
