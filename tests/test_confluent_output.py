"""The confluent-kafka engine's output, without a broker: how a delivery report is turned into a batch's report."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError

from login_pipeline.client import HandOver, Partition, Rerouted
from login_pipeline.engines.confluent import ConfluentOutput
from login_pipeline.results import Rejection
from login_pipeline.routing import source_headers


class Report:
    """What librdkafka passes to a delivery callback as the message: here, only its headers are read."""

    def __init__(self, offset: int) -> None:
        self._headers = source_headers("user-login", 2, offset)

    def headers(self):
        return self._headers


def output_with_two_records() -> tuple[ConfluentOutput, object]:
    # Nothing listens on port 9: the records stay queued, and the reports below are the only ones.
    settings = {"bootstrap.servers": "127.0.0.1:9", "logger": logging.getLogger("librdkafka")}
    output = ConfluentOutput(settings, "processed-logins", "user-login-dlq", 1.0, {})
    records = HandOver.of(Partition("user-login", 2))
    records.add(10, b"u1", b'{"user_id": "u1"}')
    records.add(11, b"k", b"not json", Rejection("malformed_json", None, "message is not valid JSON"))
    output.send(records)
    return output, output._batch


def test_a_record_the_broker_refuses_as_too_large_is_rerouted_and_reported_at_its_position():
    output, batch = output_with_two_records()
    try:
        assert batch.pending == 2
        batch.delivered(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), Report(11))
        assert batch.rerouted == [Rerouted(1, "record_too_large")]
        assert batch.pending == 2  # the refused record's answer is now its dead-letter copy's
        assert batch.failure is None
    finally:
        output._producer.purge()


def test_a_transient_failure_fails_the_batch_instead_of_rerouting():
    output, batch = output_with_two_records()
    try:
        batch.delivered(KafkaError(KafkaError._MSG_TIMED_OUT), Report(10))
        assert batch.rerouted == []
        assert batch.failure.startswith("a record was not acknowledged: _MSG_TIMED_OUT")
    finally:
        output._producer.purge()


def test_an_authorization_refusal_fails_the_batch_as_refused_for_good():
    output, batch = output_with_two_records()
    try:
        batch.delivered(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), Report(10))
        assert batch.refused and batch.failure.startswith("a record was not acknowledged: TOPIC_AUTHORIZATION_FAILED")
    finally:
        output._producer.purge()


def test_a_fatal_producer_is_replaced_and_the_next_report_says_so():
    output, batch = output_with_two_records()
    output._client_error(KafkaError(KafkaError._FATAL, fatal=True))
    batch.pending = 0  # its records answered (the purge below would fail them; their report is not the point)
    output.end_batch()  # the replacement happens here
    report = output.acknowledgement(1.0)
    assert report.producer_restarts == 1 and not report.refused
    output._closed.append(output._batch)
    output._batch.pending = 0
    assert output.acknowledgement(1.0).producer_restarts == 0  # reported once
    output._producer.purge()
