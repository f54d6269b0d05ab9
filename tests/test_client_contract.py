"""One contract suite for login_pipeline.client's Input and Output, run against the in-memory fake
(tests/fakes.py, in milliseconds: `make test-fast`) and against both real engines on real brokers
(`make test`), so the fast specification of the run loop cannot drift from what runs.

Each backend is a small harness: it builds an Input over given records, or an Output, and reads back
what was committed or written. The assertions are the same for all three.
"""

from __future__ import annotations

import time
from typing import Optional

import pytest
from kafka import KafkaProducer

from local_kafka.brokers import Pair, create_topics, unique_name
from login_pipeline.client import BatchReport, HandOver, Input, Output, Partition, Polled, Rerouted
from login_pipeline.results import MALFORMED_JSON, RECORD_TOO_LARGE, Rejection
from login_pipeline.routing import DEFAULT_MAX_REQUEST_SIZE
from tests.fakes import FakeInput, FakeOutput
from tests.kafka_helpers import committed_offsets, read_all

Records = dict[int, list[tuple[Optional[bytes], Optional[bytes]]]]  # input partition -> (key, value) in order
# What landed, per input (partition, offset): (topic kind "output" or "dlq", key, value, headers).
Landed = dict[tuple[int, int], list[tuple[str, Optional[bytes], bytes, dict[str, bytes]]]]
REFUSED_BYTES = 4_000  # a topic that refuses larger records, for the rerouting contract
WAIT_S = 60.0


class FakeBackend:
    def __init__(self) -> None:
        self._outputs: list[FakeOutput] = []
        self._inputs: list[FakeInput] = []

    def input(self, records: Records, batch_size: int = 100) -> Input:
        self._inputs.append(FakeInput(FakeOutput(), records, batch_size=batch_size, topic="user-login"))
        return self._inputs[-1]

    def input_topic(self) -> str:
        return "user-login"

    def committed(self) -> dict[int, int]:
        return {partition.partition: offset for partition, offset in self._inputs[-1].committed.items()}

    def output(self, refusing_above: Optional[int] = None, limits_known: bool = True) -> Output:
        limits = {"processed-logins": refusing_above or 1_048_576, "user-login-dlq": 1_048_576}
        output = FakeOutput(
            size_limits=limits if limits_known else FakeOutput().size_limits, refuse_above=refusing_above
        )
        self._outputs.append(output)
        return output

    def landed(self) -> Landed:
        landed: Landed = {}
        for record in self._outputs[-1].delivered:
            landed.setdefault(record.source, []).append((record.topic, record.key, record.value, record.headers))
        return landed

    def close(self) -> None:
        pass


class KafkaBackend:
    """One engine on the session's plain clusters, with topics of its own for each test."""

    def __init__(self, engine: str, kafka: Pair) -> None:
        self._engine = engine
        self._kafka = kafka
        self._input_topic = unique_name("contract-in")
        self._group = unique_name("contract-group")
        self._output_topic = unique_name("contract-out")
        self._dlq_topic = unique_name("contract-dlq")
        self._closing: list = []

    def input(self, records: Records, batch_size: int = 100) -> Input:
        create_topics(self._kafka.input, max(records) + 1, self._input_topic)
        producer = KafkaProducer(bootstrap_servers=self._kafka.input.bootstrap, linger_ms=5)
        for partition, pairs in records.items():
            for key, value in pairs:
                producer.send(self._input_topic, value=value, key=key, partition=partition)
        producer.flush(timeout=WAIT_S)
        producer.close(timeout=10)
        servers = (self._kafka.input.bootstrap,)
        if self._engine == "confluent-kafka":
            from login_pipeline.engines import confluent

            source: Input = confluent.ConfluentInput(
                confluent.consumer_settings(servers, self._group, {}), self._input_topic, batch_size
            )
        else:
            from kafka import KafkaConsumer

            from login_pipeline.engines import kafka_python

            source = kafka_python.KafkaPythonInput(
                KafkaConsumer(**kafka_python.consumer_settings(servers, self._group, batch_size)), self._input_topic
            )
        return source

    def input_topic(self) -> str:
        return self._input_topic

    def committed(self) -> dict[int, int]:
        offsets = committed_offsets(self._kafka.input, self._input_topic, self._group)
        return {partition: offset for partition, offset in offsets.items() if offset is not None}

    def output(self, refusing_above: Optional[int] = None, limits_known: bool = True) -> Output:
        configs = {"max.message.bytes": str(refusing_above)} if refusing_above is not None else None
        create_topics(self._kafka.output, 1, self._output_topic, configs=configs)
        create_topics(self._kafka.output, 1, self._dlq_topic)
        servers = (self._kafka.output.bootstrap,)
        # As login_pipeline.engines.connect does: the output is told each topic's limit, read from the
        # cluster; unknown when the cluster will not describe its topics, and the broker's refusal tells.
        known = refusing_above is not None and limits_known
        limits = {self._output_topic: refusing_above} if known else {}
        if self._engine == "confluent-kafka":
            from login_pipeline.engines import confluent

            output: Output = confluent.ConfluentOutput(
                confluent.producer_settings(servers), self._output_topic, self._dlq_topic, WAIT_S, limits
            )
        else:
            from login_pipeline.engines import kafka_python, kafka_python_output

            output = kafka_python_output.OutputProcess(
                kafka_python.producer_settings(servers), self._output_topic, self._dlq_topic, WAIT_S, limits
            )
        self._closing.append(output)
        return output

    def landed(self) -> Landed:
        landed: Landed = {}
        for topic, kind in ((self._output_topic, "output"), (self._dlq_topic, "dlq")):
            for record in read_all(self._kafka.output, topic):
                landed.setdefault(record.source, []).append((kind, record.key, record.value, record.headers))
        return landed

    def close(self) -> None:
        for output in self._closing:
            output.close()


@pytest.fixture(
    params=[
        "fake",
        pytest.param("kafka-python", marks=pytest.mark.kafka),
        pytest.param("confluent-kafka", marks=pytest.mark.kafka),
    ]
)
def backend(request):
    if request.param == "fake":
        harness = FakeBackend()
    else:
        harness = KafkaBackend(request.param, request.getfixturevalue("plain_kafka"))
    yield harness
    harness.close()


def handover(partition: int, records: list[tuple[int, Optional[bytes], bytes, Optional[Rejection]]]) -> HandOver:
    handed = HandOver.of(Partition("user-login", partition))
    for offset, key, value, rejection in records:
        handed.add(offset, key, value, rejection)
    return handed


def reports(output: Output, batches: int) -> list[BatchReport]:
    answered = []
    for _ in range(batches):
        report = output.acknowledgement(WAIT_S)
        assert report is not None, "no report within the wait"
        answered.append(report)
    return answered


def poll_all(source: Input, expected: int) -> list[Polled]:
    polled: list[Polled] = []
    deadline = time.monotonic() + WAIT_S
    while sum(len(part.offsets) for part in polled) < expected and time.monotonic() < deadline:
        polled.extend(source.poll(0.5))
    return polled


def subscribed(source: Input, revoked: Optional[list] = None, assigned: Optional[list] = None) -> Input:
    def on_revoke(partitions):
        if revoked is not None:
            revoked.append(partitions)
        return {}

    def on_assign(partitions):
        if assigned is not None:
            assigned.append(partitions)

    source.subscribe(on_revoke, lambda _error: None, on_assign)
    return source


# Output


def test_each_batch_is_reported_once_in_the_order_closed_and_every_record_lands_once(backend):
    output = backend.output()
    bad = Rejection(MALFORMED_JSON, None, "message is not valid JSON")
    output.send(handover(0, [(0, b"u0", b'{"user_id": "u0"}', None), (1, b"k", b"not json", bad)]))
    output.send(handover(1, [(0, b"u1", b'{"user_id": "u1"}', None)]))
    output.end_batch()
    output.send(handover(0, [(2, b"u2", b'{"user_id": "u2"}', None)]))
    output.end_batch()
    assert [report.failure for report in reports(output, 2)] == [None, None]
    assert output.acknowledgement(0.2) is None  # nothing more to report
    landed = backend.landed()
    assert sorted(landed) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert all(len(records) == 1 for records in landed.values())
    [(kind, key, value, headers)] = landed[(0, 1)]
    assert (kind, key, value) == ("dlq", b"k", b"not json") and headers["dlq.reason"] == b"malformed_json"
    [(kind, key, value, headers)] = landed[(1, 0)]
    assert (kind, key, value) == ("output", b"u1", b'{"user_id": "u1"}')
    assert headers["source.topic"] == b"user-login" and headers["source.offset"] == b"0"


def test_a_dead_letter_with_a_null_value_lands_empty_and_flagged(backend):
    output = backend.output()
    output.send(handover(0, [(0, None, None, Rejection(MALFORMED_JSON, None, "the record has no value (null)"))]))
    output.end_batch()
    assert reports(output, 1)[0].failure is None
    [(kind, key, value, headers)] = backend.landed()[(0, 0)]
    assert (kind, key, value, headers["dlq.null_value"]) == ("dlq", None, b"", b"true")


def test_a_record_the_cluster_refuses_as_too_large_is_rerouted_and_reported_at_its_position(backend):
    output = backend.output(refusing_above=REFUSED_BYTES)
    output.send(handover(0, [(0, b"u0", b'{"user_id": "u0"}', None), (1, b"u1", b"x" * (2 * REFUSED_BYTES), None)]))
    output.end_batch()
    report = reports(output, 1)[0]
    assert report.failure is None and report.rerouted == (Rerouted(1, RECORD_TOO_LARGE),)
    landed = backend.landed()
    assert [kind for kind, *_ in landed[(0, 0)]] == ["output"]
    [(kind, key, value, headers)] = landed[(0, 1)]
    assert (kind, key, value) == ("dlq", b"u1", b"")
    assert headers["dlq.reason"] == b"record_too_large" and headers["dlq.value_bytes"] == b"8000"


def test_with_the_limits_unknown_a_record_the_broker_refuses_is_still_rerouted_at_its_position(backend):
    """When the batch is produced again, as the run loop does with a failed one (kafka-python's producer
    is replaced after the refusal: its batches in flight fail too), within a few attempts, never a stall."""
    output = backend.output(refusing_above=REFUSED_BYTES, limits_known=False)
    for attempt in (1, 2, 3):
        output.send(handover(0, [(1, b"u1", b"x" * (2 * REFUSED_BYTES), None)]))
        output.end_batch()
        report = reports(output, 1)[0]
        if report.failure is None:
            break
        assert attempt < 3 and not report.refused, report
    assert report.failure is None and report.rerouted == (Rerouted(0, RECORD_TOO_LARGE),)
    output.send(handover(0, [(2, b"u2", b'{"user_id": "u2"}', None)]))  # the partition moves on
    output.end_batch()
    assert reports(output, 1)[0].failure is None
    landed = backend.landed()
    assert [(kind, key, value, headers["dlq.reason"]) for kind, key, value, headers in landed[(0, 1)]] == [
        ("dlq", b"u1", b"", b"record_too_large")
    ]
    assert [kind for kind, *_ in landed[(0, 2)]] == ["output"]


def test_size_limits_name_both_topics_and_never_exceed_a_request(backend):
    output = backend.output()
    assert len(output.size_limits) == 2
    assert all(0 < limit <= DEFAULT_MAX_REQUEST_SIZE for limit in output.size_limits.values())


# Input


def test_poll_returns_each_partitions_records_in_offset_order_with_their_keys_and_null_values(backend):
    records: Records = {0: [(b"a", b"1"), (b"t", None), (b"c", b"3")], 1: [(None, b"x")]}
    assigned: list = []
    source = subscribed(backend.input(records), assigned=assigned)
    try:
        polled = poll_all(source, 4)
        by_partition: dict[int, list] = {}
        for part in polled:
            assert part.partition.topic == backend.input_topic()
            rows = by_partition.setdefault(part.partition.partition, [])
            rows.extend(zip(part.offsets, part.keys, part.values))
        assert by_partition == {0: [(0, b"a", b"1"), (1, b"t", None), (2, b"c", b"3")], 1: [(0, None, b"x")]}
        assert assigned and {p.partition for p in assigned[-1]} == {0, 1} == {p.partition for p in source.assignment()}
    finally:
        source.close()


def test_seek_makes_the_next_poll_of_that_partition_start_there(backend):
    source = subscribed(backend.input({0: [(None, b"%d" % n) for n in range(5)]}))
    try:
        poll_all(source, 5)
        source.seek(Partition(backend.input_topic(), 0), 2)
        again = poll_all(source, 3)
        assert [offset for part in again for offset in part.offsets] == [2, 3, 4]
    finally:
        source.close()


def test_a_waited_commit_is_what_the_group_resumes_from_and_close_revokes_first(backend):
    revoked: list = []
    source = subscribed(backend.input({0: [(None, b"%d" % n) for n in range(4)]}), revoked=revoked)
    try:
        poll_all(source, 4)
        assert source.commit({Partition(backend.input_topic(), 0): 3}, WAIT_S)
    finally:
        source.close()
    assert backend.committed() == {0: 3}
    assert revoked and {p.partition for p in revoked[-1]} == {0}


def test_the_contract_catches_a_refused_record_counted_as_delivered(monkeypatch):
    """Not vacuous: a delivery core that counts a refused record as delivered fails the rerouting contract.
    (Planted by hand in login_pipeline/delivery.py, it fails it for both engines too.)"""
    from login_pipeline.delivery import BatchDelivery

    monkeypatch.setattr(BatchDelivery, "_reroute", lambda self, position, record, reason, error_name: None)
    with pytest.raises(AssertionError):
        test_a_record_the_cluster_refuses_as_too_large_is_rerouted_and_reported_at_its_position(FakeBackend())
