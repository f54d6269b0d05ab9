"""The kafka-python engine's output process, without a broker: how its errors are classified, settled
batches reported and keys hashed."""

from __future__ import annotations

from collections import deque

import pytest
from kafka.errors import (
    InvalidRecordError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
)

from login_pipeline.client import BatchReport, HandOver
from login_pipeline.delivery import ErrorKind, Route
from login_pipeline.engines import kafka_python_output
from login_pipeline.engines.kafka_python_output import (
    _Batch,
    _LearnedLimits,
    _report_settled,
    classified,
    key_hashes,
    murmur2,
)
from login_pipeline.results import MALFORMED_JSON, Rejection

ROUTE = Route("processed-logins", "user-login-dlq", 1_048_576, 1_048_576)


class Pipe:
    def __init__(self) -> None:
        self.sent: list[BatchReport] = []

    def send(self, message: BatchReport) -> None:
        self.sent.append(message)


def test_producer_restarts_ride_on_the_next_report_once():
    pipe = Pipe()
    limits = _LearnedLimits(ROUTE)
    unreported: deque[_Batch] = deque([_Batch(limits, None), _Batch(limits, None)])  # nothing sent: settled at once
    assert _report_settled(pipe, unreported, restarts=2) == 0  # type: ignore[arg-type]
    assert [report.producer_restarts for report in pipe.sent] == [2, 0]
    assert all(report.failure is None for report in pipe.sent)


def test_restarts_wait_for_a_report_to_carry_them():
    pipe = Pipe()
    assert _report_settled(pipe, deque(), restarts=1) == 1  # type: ignore[arg-type]
    assert pipe.sent == []


def test_only_the_logins_keys_are_hashed_never_a_dead_letters(monkeypatch):
    records = HandOver("user-login", 0, [7, 8, 9], [b"user-1", b"k" * 1_000_000, b"user-2"], [b"{}", b"x", b"{}"], {})
    records.rejections[1] = Rejection(MALFORMED_JSON, None, "message is not valid JSON")
    hashed: list[bytes] = []
    monkeypatch.setattr(kafka_python_output, "murmur2", lambda key: hashed.append(key) or murmur2(key))
    assert key_hashes(records) == [murmur2(b"user-1"), 0, murmur2(b"user-2")]
    assert hashed == [b"user-1", b"user-2"]  # the megabyte key of the dead letter was never hashed


@pytest.mark.parametrize(
    "error, kind",
    [
        (MessageSizeTooLargeError(), ErrorKind.TOO_LARGE),
        (RecordListTooLargeError(), ErrorKind.TOO_LARGE),
        (InvalidRecordError(), ErrorKind.INVALID),
        (TopicAuthorizationFailedError(), ErrorKind.REFUSED_US),
        (SaslAuthenticationFailedError(), ErrorKind.REFUSED_US),
        (KafkaTimeoutError(), ErrorKind.RETRIABLE),
        (NotLeaderForPartitionError(), ErrorKind.RETRIABLE),
    ],
)
def test_kafka_python_errors_are_classified_for_the_delivery_core(error, kind):
    assert classified(error).kind is kind and classified(error).name == type(error).__name__


def test_a_size_the_broker_refused_becomes_the_limit_and_only_ever_lowers_it():
    limits = _LearnedLimits(ROUTE)
    limits.refused("processed-logins", 5_000)
    assert limits.route.output_limit == 4_999 and limits.route.dlq_limit == ROUTE.dlq_limit
    limits.refused("processed-logins", 9_000)  # larger than what is already refused: nothing to learn
    assert limits.route.output_limit == 4_999
    limits.refused("user-login-dlq", 100)
    assert limits.route.dlq_limit == 99
