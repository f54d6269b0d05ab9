"""The delivery core's policy, engine-neutral: routing, size limits, rerouting, failures, the report.

Each engine and the fake only produce records and hand answers back; what follows from an answer is
decided here, once. The contract suite (tests/test_output_contract.py) checks the same through each
engine on real brokers.
"""

from __future__ import annotations

from typing import Optional

from login_pipeline.client import HandOver, Partition, Rerouted
from login_pipeline.delivery import BatchDelivery, ClientError, ErrorKind, Route
from login_pipeline.results import MALFORMED_JSON, RECORD_REJECTED, RECORD_TOO_LARGE, Rejection

ROUTE = Route("processed-logins", "user-login-dlq", 10_000, 10_000)
TIMED_OUT = ClientError(ErrorKind.RETRIABLE, "KafkaTimeoutError", "no answer in 60 s")
NOT_AUTHORIZED = ClientError(ErrorKind.REFUSED_US, "TOPIC_AUTHORIZATION_FAILED", "not authorized")


class Producer:
    """Records what the core produced; refuses at once those it is told to."""

    def __init__(self, refuse_at_once: Optional[ClientError] = None) -> None:
        self.produced: list[tuple[str, Optional[bytes], bytes, dict[str, bytes], Optional[int], int]] = []
        self._refuse_at_once = refuse_at_once

    def __call__(self, topic, key, value, headers, partition, position) -> Optional[ClientError]:
        self.produced.append((topic, key, value, dict(headers), partition, position))
        return self._refuse_at_once


def batch_of_three(producer: Producer, route: Route = ROUTE) -> BatchDelivery:
    batch = BatchDelivery(route, producer)
    records = HandOver.of(Partition("user-login", 2))
    records.add(10, b"u1", b'{"user_id": "u1"}')
    records.add(11, b"k", b"not json", Rejection(MALFORMED_JSON, None, "message is not valid JSON"))
    records.add(12, b"u2", b'{"user_id": "u2"}')
    batch.send(records, partitions=[4, 0, 5])
    return batch


def test_logins_go_to_the_output_and_rejections_to_the_dlq_with_source_headers_in_order():
    producer = Producer()
    batch = batch_of_three(producer)
    assert [(topic, key, partition, position) for topic, key, _, _, partition, position in producer.produced] == [
        ("processed-logins", b"u1", 4, 0),
        ("user-login-dlq", b"k", None, 1),
        ("processed-logins", b"u2", 5, 2),
    ]
    _, _, value, headers, _, _ = producer.produced[1]
    assert value == b"not json" and headers["dlq.reason"] == b"malformed_json"
    assert [record[3]["source.offset"] for record in producer.produced] == [b"10", b"11", b"12"]
    assert all(record[3]["source.partition"] == b"2" for record in producer.produced)
    assert batch.pending == 3 and not batch.all_answered


def test_a_batch_is_settled_and_clean_only_when_every_record_was_acknowledged():
    batch = batch_of_three(Producer())
    for position in (0, 1):
        batch.answered(position, None)
    assert not batch.all_answered
    batch.answered(2, None)
    assert batch.all_answered and batch.report() == batch.report()._replace(failure=None, rerouted=(), refused=False)


def test_a_record_refused_as_too_large_is_rerouted_once_without_its_value_and_reported_at_its_position():
    producer = Producer()
    batch = batch_of_three(producer)
    batch.answered(2, ClientError(ErrorKind.TOO_LARGE, "MSG_SIZE_TOO_LARGE"))
    topic, key, value, headers, _, position = producer.produced[-1]
    assert (topic, key, value, position) == ("user-login-dlq", b"u2", b"", 2)
    assert headers["dlq.reason"] == b"record_too_large" and headers["dlq.value_bytes"] == b"17"
    assert b"MSG_SIZE_TOO_LARGE" in headers["dlq.error"] and headers["source.offset"] == b"12"
    assert batch.pending == 3  # the refused record's answer is now its dead-letter form's
    for position in (0, 1, 2):
        batch.answered(position, None)
    report = batch.report()
    assert report.failure is None and report.rerouted == (Rerouted(2, RECORD_TOO_LARGE),)


def test_an_invalid_dead_letter_is_rerouted_with_why_it_was_one():
    producer = Producer()
    batch = batch_of_three(producer)
    batch.answered(1, ClientError(ErrorKind.INVALID, "INVALID_RECORD"))
    headers = producer.produced[-1][3]
    assert headers["dlq.reason"] == RECORD_REJECTED.encode() and headers["dlq.refused_reason"] == b"malformed_json"


def test_a_refusal_of_the_rerouted_form_fails_the_batch_instead_of_rerouting_again():
    producer = Producer()
    batch = batch_of_three(producer)
    too_large = ClientError(ErrorKind.TOO_LARGE, "MSG_SIZE_TOO_LARGE")
    batch.answered(0, too_large)
    batch.answered(0, too_large)  # the dead-letter form, refused too
    assert len(producer.produced) == 4  # one reroute, no second
    for position in (1, 2):
        batch.answered(position, None)
    report = batch.report()
    assert batch.all_answered and report.failure is not None and not report.refused


def test_a_record_that_cannot_fit_its_topic_is_never_produced_its_refused_form_goes_instead():
    producer = Producer()
    batch = BatchDelivery(Route("processed-logins", "user-login-dlq", 3_000, 3_000), producer)
    records = HandOver.of(Partition("user-login", 0))
    records.add(5, b"u1", b"x" * 5_000)
    batch.send(records)
    [(topic, key, value, headers, _, position)] = producer.produced
    assert (topic, value, position) == ("user-login-dlq", b"", 0) and headers["dlq.value_bytes"] == b"5000"
    batch.answered(0, None)
    assert batch.report().rerouted == (Rerouted(0, RECORD_TOO_LARGE),)


def test_a_transient_failure_fails_the_batch_and_a_refusal_of_us_wins_the_report():
    batch = batch_of_three(Producer())
    batch.answered(0, TIMED_OUT)
    for position in (1, 2):
        batch.answered(position, None)
    assert batch.report().failure.startswith("1 of 3 records were not acknowledged: KafkaTimeoutError")
    assert not batch.report().refused
    batch = batch_of_three(Producer())
    batch.answered(0, TIMED_OUT)
    batch.answered(1, None)
    batch.answered(2, NOT_AUTHORIZED)
    report = batch.report(producer_restarts=2)
    assert report.refused and report.producer_restarts == 2
    assert report.failure == "2 of 3 records were not acknowledged: TOPIC_AUTHORIZATION_FAILED: not authorized"


def test_a_record_refused_on_the_spot_is_answered_at_once():
    batch = batch_of_three(Producer(refuse_at_once=TIMED_OUT))
    assert batch.all_answered and batch.report().failure.startswith("3 of 3 records were not acknowledged")


def test_a_failure_not_tied_to_a_record_fails_the_batch():
    batch = BatchDelivery(ROUTE, Producer())
    batch.fail("the partitions of processed-logins are unknown")
    assert batch.all_answered and batch.report().failure == "the partitions of processed-logins are unknown"


def test_a_reported_batch_lets_go_of_its_records_and_of_the_engine_state_that_refers_back_to_it():
    import gc
    import weakref

    class EngineBatch:  # as each engine's per-batch state: it holds the delivery, whose produce is its own
        def __init__(self) -> None:
            self.delivery = BatchDelivery(ROUTE, self.produce)

        def produce(self, topic, key, value, headers, partition, position):
            return None

    gc.disable()  # only reference counting: a cycle left in place would keep the batch alive
    try:
        engine_batch = EngineBatch()
        records = HandOver.of(Partition("user-login", 0))
        records.add(0, b"u0", b"{}")
        engine_batch.delivery.send(records)
        engine_batch.delivery.answered(0, None)
        report = engine_batch.delivery.report()
        gone = weakref.ref(engine_batch)
        del engine_batch
        assert gone() is None
        assert report.failure is None
    finally:
        gc.enable()


def test_a_refused_record_the_engine_cannot_place_fails_the_batch_instead_of_a_guess():
    producer = Producer()
    batch = batch_of_three(producer)
    batch.answered(None, ClientError(ErrorKind.TOO_LARGE, "MSG_SIZE_TOO_LARGE"))
    for position in (1, 2):
        batch.answered(position, None)
    assert len(producer.produced) == 3  # nothing rerouted
    assert batch.all_answered and batch.report().failure.startswith("1 of 3 records were not acknowledged")
