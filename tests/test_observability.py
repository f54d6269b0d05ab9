"""/metrics, /livez and /readyz of the real processor on real brokers, with each engine.

The counters must equal what was sent, message for message; readiness must follow the output
cluster away and back while liveness holds.
"""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from kafka_consumer_processor import process_message
from local_kafka import brokers
from local_kafka.brokers import free_ports
from local_kafka.generator import FeedProfile, generate
from login_pipeline.results import ProcessedLogin
from tests.kafka_helpers import TEST_PII_KEY, Processor, Topics, caught_up, produce, wait_until

PROBE_BOUND_S = 10.0


def status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_counters_equal_what_was_sent_and_lag_returns_to_zero(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    values = [event.value for event, _ in zip(generate(31, FeedProfile()), range(3_000))]
    expected = [process_message(raw, time.time(), TEST_PII_KEY.encode()) for raw in values]
    valid = [result for result in expected if isinstance(result, ProcessedLogin)]
    reasons = Counter(result.reason for result in expected if not isinstance(result, ProcessedLogin))
    produce(kafka.input, topics.input, values)
    port = free_ports(1)[0]
    with Processor(kafka, topics, tmp_path, engine=engine, METRICS_PORT=str(port), BATCH_SIZE="500") as processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=90, message="caught up")
        wait_until(
            lambda: (
                value(scrape(port), "login_processor_messages_consumed_total") == len(values)
                and sum(v for (name, _), v in scrape(port).items() if name == "login_processor_consumer_lag_records")
                == 0
            ),
            timeout=30,
            message="every message counted and lag 0",
        )
        metrics = scrape(port)
        assert status(port, "/livez") == 200 and status(port, "/readyz") == 200
        assert processor.stop() == 0

    assert value(metrics, "login_processor_messages_processed_total", outcome="valid") == len(valid)
    assert value(metrics, "login_processor_messages_processed_total", outcome="rejected") == sum(reasons.values())
    assert value(metrics, "login_processor_messages_repaired_total") == sum(
        1 for result in valid if result.record["repaired_fields"]
    )
    for reason, count in reasons.items():
        assert value(metrics, "login_processor_dead_letters_total", reason=reason) == count, reason
    assert value(metrics, "login_processor_records_acknowledged_total", topic="output") == len(valid)
    assert value(metrics, "login_processor_records_acknowledged_total", topic="dlq") == sum(reasons.values())
    assert value(metrics, "login_processor_records_produced_total", topic="output") == len(valid)
    assert value(metrics, "login_processor_event_delay_seconds_count") == len(valid)
    assert value(metrics, "login_processor_event_delay_seconds_bucket", le="+Inf") == len(valid)
    batches = value(metrics, "login_processor_batch_processing_seconds_count")
    assert batches >= len(values) / 500
    assert value(metrics, "login_processor_batch_acknowledgement_seconds_count") == batches
    assert value(metrics, "login_processor_commit_failures_total") == 0
    assert value(metrics, "login_processor_last_commit_timestamp_seconds") > time.time() - 120
    assert value(metrics, "login_processor_assigned_partitions") == 3
    info = [labels for (name, labels) in metrics if name == "login_processor_build_info"]
    assert dict(info[0])["engine"] == engine and dict(info[0])["consumer_group"] == topics.group


def readyz_turns(port: int, wanted: int, failure: str) -> float:
    """Seconds until /readyz answers `wanted` (at most PROBE_BOUND_S), /livez answering 200 all along."""
    since = time.monotonic()
    while status(port, "/readyz") != wanted:
        assert time.monotonic() - since < PROBE_BOUND_S, failure
        assert status(port, "/livez") == 200
        time.sleep(0.25)
    return time.monotonic() - since


def test_readyz_follows_the_output_cluster_away_and_back_while_livez_holds(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    produce(kafka.input, topics.input, [event.value for event, _ in zip(generate(32, FeedProfile()), range(500))])
    port = free_ports(1)[0]
    with Processor(kafka, topics, tmp_path, engine=engine, METRICS_PORT=str(port)) as processor:
        wait_until(lambda: status(port, "/readyz") == 200, timeout=60, message="ready")
        brokers.stop(kafka.output)
        try:
            unready_after = readyz_turns(port, 503, "still ready with the output cluster gone")
            for _ in range(8):  # and it stays live while the cluster is away
                assert status(port, "/livez") == 200
                time.sleep(0.25)
        finally:
            brokers.up((kafka.output,))
        ready_after = readyz_turns(port, 200, "not ready again after the output cluster returned")
        print(
            f"\n[readiness {engine}] 503 {unready_after:.1f} s after the stop, 200 {ready_after:.1f} s after the return"
        )
        assert processor.stop() == 0


def test_json_logs_are_one_object_per_line_from_every_process_and_library(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    produce(kafka.input, topics.input, [event.value for event, _ in zip(generate(33, FeedProfile()), range(300))])
    with Processor(kafka, topics, tmp_path, engine=engine, LOG_FORMAT="json") as processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=60, message="caught up")
        assert processor.stop() == 0
    lines = processor.stderr.splitlines()
    entries = [json.loads(line) for line in lines]  # every line, the output process's and the clients' too
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any("consuming" in entry["message"] for entry in entries)
