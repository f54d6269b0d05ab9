"""The confluent-kafka engine's output, without a broker: how librdkafka's errors are classified, and a
fatal producer replaced. (The delivery policy itself: tests/test_delivery.py; on brokers, the
contract suite: tests/test_output_contract.py.)"""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from login_pipeline.client import HandOver, Partition
from login_pipeline.delivery import ErrorKind
from login_pipeline.engines.confluent import ConfluentOutput, classified


@pytest.mark.parametrize(
    "code, kind",
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, ErrorKind.TOO_LARGE),
        (KafkaError.RECORD_LIST_TOO_LARGE, ErrorKind.TOO_LARGE),
        (KafkaError.INVALID_RECORD, ErrorKind.INVALID),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, ErrorKind.REFUSED_US),
        (KafkaError.SASL_AUTHENTICATION_FAILED, ErrorKind.REFUSED_US),
        (KafkaError._MSG_TIMED_OUT, ErrorKind.RETRIABLE),
        (KafkaError.NOT_LEADER_FOR_PARTITION, ErrorKind.RETRIABLE),
    ],
)
def test_librdkafka_errors_are_classified_for_the_delivery_core(code, kind):
    error = classified(KafkaError(code))
    assert error.kind is kind and error.name == KafkaError(code).name()


def test_a_fatal_producer_is_replaced_and_the_next_report_says_so():
    # Nothing listens on port 9: the records stay queued, and no report comes but those made here.
    settings = {"bootstrap.servers": "127.0.0.1:9", "logger": logging.getLogger("librdkafka")}
    output = ConfluentOutput(settings, "processed-logins", "user-login-dlq", 1.0, {})
    records = HandOver.of(Partition("user-login", 2))
    records.add(10, b"u1", b'{"user_id": "u1"}')
    output.send(records)
    output._client_error(KafkaError(KafkaError._FATAL, fatal=True))
    output.end_batch()  # the replacement happens here: the old producer's queue is purged
    report = output.acknowledgement(1.0)
    assert report.producer_restarts == 1 and not report.refused
    assert report.failure is not None and "_PURGE_QUEUE" in report.failure  # retried by the run loop
    output.end_batch()  # an empty batch, settled at once
    assert output.acknowledgement(1.0).producer_restarts == 0  # reported once
    output._producer.purge()
