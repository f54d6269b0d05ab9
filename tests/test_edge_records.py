"""Records any Kafka producer can legally write, between valid logins on one partition: each lands
exactly once in the output or the dead-letter topic, the partition moves on, the processor lives."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from local_kafka.brokers import java_executable, kafka_classpath
from local_kafka.generator import FeedProfile, generate
from tests.kafka_helpers import Processor, Topics, caught_up, delivery, wait_until

KAFKA_LIMIT = 1_048_576  # the producer's max.request.size and, within batch overhead, the broker's message.max.bytes


def login(**changes) -> bytes:
    event = {
        "user_id": "edge-user",
        "app_version": "2.3.0",
        "ip": "8.8.8.8",
        "locale": "RI",
        "device_id": "d-1",
        "timestamp": 1720576825,
        "device_type": "android",
        **changes,
    }
    return json.dumps(event).encode()


# (name, key, value, headers): what a Java or librdkafka producer can write to any non-compacted topic.
EDGE_RECORDS = [
    ("null key and null value", None, None, []),
    ("a key and a null value (tombstone)", b"k", None, []),
    ("an empty value", None, b"", []),
    ("a binary key on a valid login", bytes(range(256)), login(), []),
    ("a 100 KB key on a bad value", b"K" * 100_000, b"not json", []),
    ("500 headers on a valid login", None, login(), [(f"h{n}", b"v" * 10) for n in range(500)]),
    (
        "odd headers",
        None,
        login(),
        [
            ("", b""),
            ("é\u202e\x00", b"\xff\xfe"),
            ("dup", b"1"),
            ("dup", b"2"),
            ("null", None),
            ("dlq.reason", b"forged"),
            ("source.offset", b"-1"),
        ],
    ),
    ("a 600 KB user_id", None, login(user_id="u" * 600_000), []),
    ("a valid login with a 900 KB unknown field", None, login(padding="p" * 900_000), []),
    ("a value whose dead-letter copy cannot fit", None, b"x" * (KAFKA_LIMIT - 200), []),
    ("a 1 MB key on a valid login", b"K" * (KAFKA_LIMIT - 2_000), login(), []),
]


def test_every_record_kafka_can_deliver_lands_once_and_the_partition_moves_on(kafka, engine, tmp_path):
    topics = Topics.create(kafka, partitions=1)
    valid = [event.value for event, _ in zip(generate(31, FeedProfile.clean()), range(len(EDGE_RECORDS) + 1))]
    records = []
    for (_, key, value, headers), good in zip(EDGE_RECORDS, valid):
        records += [(None, good, []), (key, value, headers)]
    produce_with_java(kafka.input.bootstrap, topics.input, [*records, (None, valid[-1], [])])

    with Processor(kafka, topics, tmp_path, engine=engine) as processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=120, message="processor got through the edge records")
        assert processor.process.poll() is None, processor.stderr
        assert processor.stop(signal.SIGTERM) == 0

    landed = delivery(kafka, topics)
    assert len(landed.inputs) == 2 * len(EDGE_RECORDS) + 1
    assert landed.lost == [] and landed.duplicates == 0
    assert landed.dlq_bytes_match()
    output_sources = {record.source[1] for record in landed.outputs}
    assert {offset for offset in range(0, 2 * len(EDGE_RECORDS) + 1, 2)} <= output_sources  # every valid one
    by_name = {name: landed.inputs[(0, 2 * n + 1)] for n, (name, *_) in enumerate(EDGE_RECORDS)}
    dead = {record.source[1]: record for record in landed.dead_letters}

    def dead_letter(name: str):
        return dead[by_name[name].offset]

    for name in (
        "a binary key on a valid login",
        "500 headers on a valid login",
        "odd headers",
        "a valid login with a 900 KB unknown field",
        "a 1 MB key on a valid login",
    ):
        assert by_name[name].offset in output_sources, name
    both_null = dead_letter("null key and null value")
    assert (both_null.key, both_null.value, both_null.headers["dlq.reason"]) == (None, b"", b"malformed_json")
    assert both_null.headers["dlq.null_value"] == b"true"
    assert dead_letter("a key and a null value (tombstone)").key == b"k"
    assert dead_letter("a 100 KB key on a bad value").key == b"K" * 100_000
    long_user = dead_letter("a 600 KB user_id")
    assert (long_user.headers["dlq.reason"], long_user.headers["dlq.field"]) == (b"invalid_field", b"user_id")
    too_large = dead_letter("a value whose dead-letter copy cannot fit")
    assert too_large.headers["dlq.reason"] == b"record_too_large"
    assert too_large.headers["dlq.refused_reason"] == b"malformed_json"
    assert too_large.headers["dlq.value_bytes"] == str(KAFKA_LIMIT - 200).encode()
    assert "record_too_large 1" in processor.stdout  # the insights count it where it went


def produce_with_java(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, list]]) -> None:
    """Write records to partition 0 with Kafka's own Java producer (tests/RawProducer.java)."""

    def field(data: bytes | None) -> str:
        return "-" if data is None else "x" + data.hex()

    lines = [
        " ".join([field(key), field(value), *(f"{field(name.encode())}={field(data)}" for name, data in headers)])
        for key, value, headers in records
    ]
    result = subprocess.run(
        [
            java_executable(),
            "-cp",
            kafka_classpath(),
            str(Path(__file__).with_name("RawProducer.java")),
            bootstrap,
            topic,
        ],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
