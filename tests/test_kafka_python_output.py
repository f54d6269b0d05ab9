"""The kafka-python engine's output process, without a broker: how settled batches are reported."""

from __future__ import annotations

from collections import deque

from login_pipeline.client import BatchReport, HandOver
from login_pipeline.engines import kafka_python_output
from login_pipeline.engines.kafka_python_output import _Batch, _report_settled, key_hashes, murmur2
from login_pipeline.results import MALFORMED_JSON, Rejection


class Pipe:
    def __init__(self) -> None:
        self.sent: list[BatchReport] = []

    def send(self, message: BatchReport) -> None:
        self.sent.append(message)


def test_producer_restarts_ride_on_the_next_report_once():
    pipe = Pipe()
    unreported: deque[_Batch] = deque([_Batch(), _Batch()])  # nothing sent: settled at once
    assert _report_settled(pipe, unreported, None, restarts=2) == 0  # type: ignore[arg-type]
    assert [report.producer_restarts for report in pipe.sent] == [2, 0]
    assert all(report.failure is None for report in pipe.sent)


def test_restarts_wait_for_a_report_to_carry_them():
    pipe = Pipe()
    assert _report_settled(pipe, deque(), None, restarts=1) == 1  # type: ignore[arg-type]
    assert pipe.sent == []


def test_only_the_logins_keys_are_hashed_never_a_dead_letters(monkeypatch):
    records = HandOver("user-login", 0, [7, 8, 9], [b"user-1", b"k" * 1_000_000, b"user-2"], [b"{}", b"x", b"{}"], {})
    records.rejections[1] = Rejection(MALFORMED_JSON, None, "message is not valid JSON")
    hashed: list[bytes] = []
    monkeypatch.setattr(kafka_python_output, "murmur2", lambda key: hashed.append(key) or murmur2(key))
    assert key_hashes(records) == [murmur2(b"user-1"), 0, murmur2(b"user-2")]
    assert hashed == [b"user-1", b"user-2"]  # the megabyte key of the dead letter was never hashed
