"""The processor end to end on real brokers: routing, headers, commits, restarts, signals, startup errors.

Each runs with both engines, on the plain pair and on the secured one (SASL_SSL, SCRAM, ACLs).
"""

import itertools
import json
import signal
import subprocess
import sys
import time

import pytest

from kafka_consumer_processor import process_message
from local_kafka.generator import FeedProfile, generate
from login_pipeline.engines.kafka_python_output import murmur2, partition_of
from login_pipeline.results import ProcessedLogin
from tests.kafka_helpers import (
    PROJECT_DIR,
    TEST_PII_KEY,
    Processor,
    Topics,
    caught_up,
    committed_offsets,
    delivery,
    end_offsets,
    on_both_pairs,
    produce,
    wait_until,
)

BAD_MESSAGES = [
    b"\xff\xfe\x00not utf-8",
    b"{truncated",
    b"[1, 2, 3]",
    b"",
    json.dumps({"app_version": "2.3.0", "timestamp": 1720576825}).encode(),
    json.dumps({"user_id": "u1", "timestamp": "yesterday"}).encode(),
    json.dumps({"user_id": "u2", "timestamp": 1720576825, "ip": "999.1.1.1"}).encode(),
]


DEFAULT_PROFILE = FeedProfile()


def generated(count: int, seed: int = 1, profile: FeedProfile = DEFAULT_PROFILE) -> list[bytes]:
    return [event.value for event in itertools.islice(generate(seed, profile), count)]


@on_both_pairs
def test_a_mixed_stream_splits_between_output_and_dlq_with_headers_and_exact_bytes(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    values = generated(1500) + BAD_MESSAGES
    produce(kafka.input, topics.input, values)
    with Processor(kafka, topics, tmp_path, engine=engine) as processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=90, message="processor caught up")
        assert processor.stop(signal.SIGTERM) == 0

    landed = delivery(kafka, topics)
    assert landed.lost == [] and landed.duplicates == 0
    assert len(landed.outputs) + len(landed.dead_letters) == len(values)
    assert landed.dlq_bytes_match()
    for record in landed.outputs + landed.dead_letters:
        assert record.headers["source.topic"] == topics.input.encode()
    for record in landed.dead_letters:
        source = landed.input_of(record)
        expected = process_message(source.value, time.time(), TEST_PII_KEY.encode())
        assert record.key == source.key
        assert record.headers["dlq.reason"] == expected.reason.encode()
        assert record.headers.get("dlq.field") == (expected.field.encode() if expected.field else None)
        assert record.headers["dlq.error"] == expected.message.encode()
    for record in landed.outputs:
        source = landed.input_of(record)
        expected = process_message(source.value, time.time(), TEST_PII_KEY.encode())
        assert isinstance(expected, ProcessedLogin)
        assert record.key == expected.key
        assert record.partition == partition_of(murmur2(record.key), 3)  # Kafka's default rule: per-user order holds
        body = json.loads(record.value)
        assert {k: v for k, v in body.items() if k not in ("processed_time", "event_delay_s")} == {
            k: v for k, v in expected.record.items() if k not in ("processed_time", "event_delay_s")
        }
    reasons = {record.headers["dlq.reason"] for record in landed.dead_letters}
    assert reasons == {b"malformed_json", b"missing_required_field", b"invalid_field"}


@on_both_pairs
def test_raw_ip_and_device_id_never_reach_the_output_topic_or_the_logs(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    values = generated(800, seed=2, profile=FeedProfile.clean())
    produce(kafka.input, topics.input, values)
    with Processor(kafka, topics, tmp_path, engine=engine) as processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=90, message="processor caught up")
        assert processor.stop() == 0
    secrets = [json.loads(v)[name].encode() for v in values for name in ("ip", "device_id")]
    output = b"\n".join(record.value for record in delivery(kafka, topics).outputs)
    logs = (processor.stdout + processor.stderr).encode()
    assert len(delivery(kafka, topics).outputs) == 800
    assert not [secret for secret in secrets if secret in output or secret in logs]
    assert TEST_PII_KEY.encode() not in logs


@on_both_pairs
def test_a_restart_resumes_from_committed_offsets_without_loss_or_duplicates(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    processor = Processor(kafka, topics, tmp_path, engine=engine)
    produce(kafka.input, topics.input, generated(700, seed=3))
    with processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=90, message="first run caught up")
        assert processor.stop(signal.SIGINT) == 0
    produce(kafka.input, topics.input, generated(900, seed=4))
    with processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=90, message="second run caught up")
        assert processor.stop(signal.SIGTERM) == 0

    landed = delivery(kafka, topics)
    assert len(landed.inputs) == 1600
    assert landed.lost == [] and landed.duplicates == 0


@on_both_pairs
def test_sigterm_exits_0_with_every_delivered_offset_committed_and_final_insights(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    produce(kafka.input, topics.input, generated(3000, seed=5))
    with Processor(kafka, topics, tmp_path, engine=engine, BATCH_SIZE="200") as processor:
        wait_until(
            lambda: any(committed_offsets(kafka.input, topics.input, topics.group).values()),
            timeout=60,
            message="a first commit",
        )
        assert processor.stop(signal.SIGTERM) == 0
    committed = committed_offsets(kafka.input, topics.input, topics.group)
    landed = delivery(kafka, topics)
    delivered = {p: 0 for p in committed}
    for partition, offset in landed.landed:
        delivered[partition] = max(delivered[partition], offset + 1)
    assert {p: committed[p] or 0 for p in committed} == delivered  # committed == produced downstream
    assert landed.duplicates == 0
    assert "── final insights:" in processor.stdout


@on_both_pairs
def test_insights_appear_every_insights_every_messages(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    produce(kafka.input, topics.input, generated(500, seed=6), partition=0)
    with Processor(kafka, topics, tmp_path, engine=engine, INSIGHTS_EVERY="100", BATCH_SIZE="50") as processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=90, message="processor caught up")
        assert processor.stop() == 0
    out = processor.stdout
    assert [f"── insights: {n:,} messages" in out for n in (100, 200, 300, 400, 500)] == [True] * 5
    for label in (
        "processed 500",
        "throughput",
        "consumer lag",
        "users",
        "device types",
        "locales",
        "app versions",
        "logins/min",
        "event delay",
    ):
        assert label in out


@on_both_pairs
def test_a_missing_topic_stops_with_one_clear_line_and_exit_1(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    with Processor(kafka, topics, tmp_path, engine=engine, OUTPUT_TOPIC="no-such-topic") as processor:
        assert processor.wait() == 1
    errors = [line for line in processor.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "topic 'no-such-topic' does not exist on the output cluster" in errors[0]
    assert end_offsets(kafka.output, topics.output) == {0: 0, 1: 0, 2: 0}


@pytest.mark.parametrize(
    "setting, value, complaint",
    [
        ("INSIGHTS_EVERY", "often", "INSIGHTS_EVERY='often' must be a whole number from 1 to 1,000,000,000"),
        ("BATCH_SIZE", "²", "BATCH_SIZE='²' must be a whole number from 1 to 100,000"),
        ("BATCH_SIZE", "10" * 40, "BATCH_SIZE='" + "10" * 30 + "'... (80 characters) must be a whole number"),
        ("INPUT_BOOTSTRAP_SERVERS", "localhost", "'localhost' is not host:port"),
        ("DLQ_TOPIC", "processed-logins", "OUTPUT_TOPIC and DLQ_TOPIC must differ"),
        ("PII_HASH_KEY", "short", "PII_HASH_KEY must be at least 16 bytes"),
        ("SECURITY_PROTOCOL", "TLS", "SECURITY_PROTOCOL='TLS' is not one of"),
        ("METRICS_PORT", "70000", "METRICS_PORT='70000' must be a port number from 0 (off) to 65535"),
        ("METRICS_PORT", "-1", "METRICS_PORT='-1' must be a port number"),
        ("METRICS_HOST", "0.0.0.0; rm -rf /", "METRICS_HOST='0.0.0.0; rm -rf /' is not a host name or an IP address"),
        ("LIVENESS_TIMEOUT_S", "0", "LIVENESS_TIMEOUT_S='0' must be a whole number from 1 to 86,400"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is not one of text, json"),
    ],
)
def test_bad_config_stops_with_one_line_and_exit_2_before_connecting(setting, value, complaint, tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        setting: value,
        # nothing listens there: had the program tried to connect, it would fail otherwise
        "OUTPUT_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    }
    if setting != "INPUT_BOOTSTRAP_SERVERS":
        env["INPUT_BOOTSTRAP_SERVERS"] = "127.0.0.1:9"
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "kafka_consumer_processor.py"), "--env-file", "/dev/null"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and complaint in result.stderr
    assert result.stdout == ""


def test_cli_flags_override_the_environment(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_DIR / "kafka_consumer_processor.py"),
            "--env-file",
            "/dev/null",
            "--insights-every",
            "zero",
        ],
        env={"PATH": "/usr/bin:/bin", "INSIGHTS_EVERY": "100"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2 and "INSIGHTS_EVERY='zero'" in result.stderr


def test_confluent_kafka_asked_for_and_not_installed_stops_with_one_line_saying_what_to_install(tmp_path):
    hide_the_package = (
        "import sys; sys.modules['confluent_kafka'] = None; import kafka_consumer_processor as k; "
        "sys.exit(k.main(['--env-file', '/dev/null']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_the_package],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(PROJECT_DIR),
            "KAFKA_CLIENT": "confluent-kafka",
            "INPUT_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "OUTPUT_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "PII_HASH_KEY": TEST_PII_KEY,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert (
        "KAFKA_CLIENT=confluent-kafka needs the Python package 'confluent_kafka': "
        "pip install -r requirements-confluent.txt" in result.stderr
    )
