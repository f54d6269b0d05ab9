"""Live insights on real brokers, with each engine: a crafted stream in (a credential-stuffing burst, a
user hopping locales, junk), the login-insights and login-alerts records out with the expected
counts, and two instances of one group whose /api/insights agree on every closed window."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass

from kafka_consumer_processor import _keyed_hash, field_key, hash_user_id
from local_kafka.brokers import Cluster, free_ports
from login_pipeline.sketches import HyperLogLog
from tests.kafka_helpers import TEST_PII_KEY, Processor, Topics, read_all, wait_until

# Short windows, so the test's windows close within seconds of the last message.
LIVE_SETTINGS = {"WINDOW_SIZE_S": "10", "WINDOW_GRACE_S": "2", "WINDOW_IDLE_S": "2"}
STUFFING_IP = "203.0.113.66"
LOCALES = ("en-US", "de-DE", "pt-BR")


@dataclass(frozen=True)
class Crafted:
    records: list[tuple[bytes | None, bytes]]  # (key, value), in the order sent
    messages: int
    logins: int
    rejected: int
    users: int


def login(user: str, at: int, ip: str, locale: str = "en-US", device_type: str = "android") -> bytes:
    event = {"user_id": user, "timestamp": at, "ip": ip, "locale": locale, "device_type": device_type}
    return json.dumps({**event, "app_version": "2.3.0", "device_id": f"device-of-{user}"}).encode()


def crafted_stream(now: float) -> Crafted:
    """Three minutes of logins ten minutes ago. The burst is keyed by its ip and the hopper by its user
    id, as a topic partitioned by those would be: one instance sees each subject whole."""
    base = int(now) // 60 * 60 - 600
    records: list[tuple[bytes | None, bytes]] = []
    for n in range(300):
        ip = f"10.1.{n // 256}.{n % 256}"
        device = ("ios", "android", "web")[n % 3]
        records.append((None, login(f"user{n}", base + n * 180 // 300, ip, LOCALES[n % 3], device)))
    for n in range(20):
        records.append((STUFFING_IP.encode(), login(f"victim{n}", base + 60 + 2 * n, STUFFING_IP)))
    for n, locale in enumerate(LOCALES):
        records.append((b"hopper", login("hopper", base + 30 + 50 * n, f"192.0.2.{n}", locale)))
    records.sort(key=lambda record: json.loads(record[1])["timestamp"])  # sent in event-time order, as logged
    for n in range(10):
        records.append((None, b"not json %d" % n))
    return Crafted(records, messages=333, logins=323, rejected=10, users=321)


def send(cluster: Cluster, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(**cluster.client_settings(), linger_ms=5)
    try:
        for key, value in records:
            producer.send(topic, value, key=key)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)


def get_json(port: int, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return json.loads(response.read()) if response.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


def ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        connection.close()


def group_totals(port: int) -> dict | None:
    document = get_json(port, "/api/insights")
    return document["group"]["totals"] if document else None


def start_group(kafka, topics: Topics, tmp_path, engine: str, instances: int) -> list[tuple[Processor, int]]:
    started = []
    for n, port in enumerate(free_ports(instances)):
        workdir = tmp_path / f"instance-{n}"
        workdir.mkdir()
        settings = {**LIVE_SETTINGS, "METRICS_PORT": str(port)}
        started.append((Processor(kafka, topics, workdir, engine, **settings).start(), port))
    wait_until(lambda: all(ready(port) for _, port in started), 90, message="every instance ready")
    return started


def test_two_instances_publish_windows_and_alerts_and_agree_on_the_group(plain_kafka, engine, tmp_path):
    kafka = plain_kafka
    topics = Topics.create(kafka, partitions=3)
    group = start_group(kafka, topics, tmp_path, engine, instances=2)
    try:
        stream = crafted_stream(time.time())
        send(kafka.input, topics.input, stream.records)
        ports = [port for _, port in group]
        wait_until(
            lambda: all((group_totals(port) or {}).get("messages") == stream.messages for port in ports),
            90,
            message="both instances' closed windows hold every message",
        )
        first, second = (get_json(port, "/api/insights")["group"] for port in ports)
        assert first["closed_windows"] == second["closed_windows"]
        assert first["totals"] == second["totals"]
        totals = first["totals"]
        assert (totals["logins"], totals["rejected"]) == (stream.logins, stream.rejected)
        assert abs(totals["distinct_users"] - stream.users) <= 3 * HyperLogLog.STANDARD_ERROR * stream.users
        assert totals["unreadable_records"] == 0
        assert {p for window in first["closed_windows"] for p in window["partitions"]} == {0, 1, 2}
    finally:
        for processor, _ in group:
            assert processor.stop() == 0, processor.stderr[-2000:]

    windows = [json.loads(record.value) for record in read_all(kafka.output, topics.insights)]
    assert sum(window["messages"] for window in windows) == stream.messages
    assert sum(window["logins"] for window in windows) == stream.logins
    assert sum(sum(window["rejected"].values()) for window in windows) == stream.rejected
    assert {window["closed_by"] for window in windows} <= {"event_time", "idle", "stop", "revoke"}
    assert sum(window["too_late_events"] for window in windows) == 0  # the partitions' disorder is not lateness
    assert len({window["instance"] for window in windows}) == 2  # each instance published its share

    alerts = [json.loads(record.value) for record in read_all(kafka.output, topics.alerts)]
    key = TEST_PII_KEY.encode()
    assert sorted((a["rule"], a["subject_hash"], *a["evidence"].values()) for a in alerts) == sorted(
        [
            ("credential_stuffing", _keyed_hash(field_key(key, "ip"), STUFFING_IP), 15),
            ("locale_hopping", hash_user_id(key, "hopper"), 3),
        ]
    )
    published = json.dumps(windows + alerts)
    assert STUFFING_IP not in published and "192.0.2." not in published and "10.1." not in published
