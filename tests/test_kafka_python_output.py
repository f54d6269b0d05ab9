"""The kafka-python engine's output process, without a broker: how settled batches are reported."""

from __future__ import annotations

from collections import deque

from login_pipeline.client import BatchReport
from login_pipeline.engines.kafka_python_output import _Batch, _report_settled


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
