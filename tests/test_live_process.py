"""The live insights in their own process (login_pipeline.live_process): the same counts as in the run
loop's process, answers within their bounds, and a child that dies never takes the pipeline with it."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from kafka_consumer_processor import process_message
from login_pipeline.app import live_settings
from login_pipeline.client import StartupError
from login_pipeline.config import defaults
from login_pipeline.live_process import LiveProcess
from tests.fakes import failing_publisher, fake_publisher

KEY = b"unit-test-key-0123456789"
T0 = 1_720_576_800


def pseudonym(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def batch():
    logins = [
        process_message(
            json.dumps({"user_id": f"u{n}", "timestamp": T0 + n, "ip": "203.0.113.5"}).encode(), T0 + 30, KEY
        )
        for n in range(20)
    ]
    return [*logins[:10], process_message(b"junk", T0 + 30, KEY), *logins[10:]]


@pytest.fixture
def live():
    process = LiveProcess(live_settings(defaults()), "text", pseudonym, fake_publisher)
    yield process
    process.close()


def test_a_batch_is_counted_in_the_child_as_it_would_be_in_the_run_loop(live):
    live.assigned({0})
    live.observe(batch(), [(0, 21)], T0 + 30)
    [window] = live.snapshot()["open_windows"]
    assert (window["messages"], window["logins"], window["rejected"]) == (21, 20, {"malformed_json": 1})
    assert live.snapshot()["alerts_raised"] == {"credential_stuffing": 1}
    live.flush("stop", 5.0)
    after = live.snapshot()
    assert after["open_windows"] == [] and after["windows_published"] == 1


def test_a_child_that_dies_stops_the_live_insights_and_nothing_else(live, caplog):
    live._child._process.kill()
    live._child._process.join()
    with caplog.at_level(logging.ERROR):
        live.observe(batch(), [(0, 21)], T0 + 30)
        live.flush("stop", 1.0)
        assert live.snapshot() == {}
    assert [record.message for record in caplog.records].count(
        "live insights stopped: its process is gone (BrokenPipeError); the pipeline goes on without them"
    ) <= 1
    assert any("live insights stopped" in record.message for record in caplog.records)


def test_a_publisher_that_cannot_start_is_a_startup_error():
    with pytest.raises(StartupError, match="no cluster here"):
        LiveProcess(live_settings(defaults()), "text", pseudonym, failing_publisher)
