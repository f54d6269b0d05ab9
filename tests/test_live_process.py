"""The live insights in their own process (login_pipeline.live_process): the same counts as in the run
loop's process, answers within their bounds, and a child that dies never takes the pipeline with it."""

from __future__ import annotations

import hashlib
import json
import logging
import time

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


def test_batches_never_wait_on_an_http_question_that_waits_for_its_answer(live):
    # Reproduced with one pipe: 32 callers of /api/insights and /metrics held the hand-over's lock
    # in turn and cut the batches delivered from 216 to 116 in 4 s.
    import threading

    live.assigned({0})
    handed_over = threading.Event()
    with live._questions.lock:  # as an HTTP thread holds it while the child answers a question
        thread = threading.Thread(
            target=lambda: [live.observe(batch(), [(0, 21)], T0 + 30) for _ in range(20)] and handed_over.set(),
            daemon=True,
        )
        thread.start()
        assert handed_over.wait(20), "a batch waited for the questions' pipe"
    assert live.snapshot()["instance"]  # and questions are answered again once the lock is free


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


def test_the_group_view_is_read_and_merged_in_the_child_and_asked_for_by_http():
    from functools import partial

    from login_pipeline.client import FeedRecord
    from tests.fakes import feed_of
    from tests.test_live import alert_record, window_record

    records = [
        FeedRecord("login-insights", 0, 0, window_record(range(0, 30), "a")),
        FeedRecord("login-insights", 0, 1, window_record(range(20, 50), "b")),
        FeedRecord("login-insights", 0, 2, b"not ours"),
        FeedRecord("login-alerts", 0, 0, alert_record()),
    ]
    process = LiveProcess(live_settings(defaults()), "text", pseudonym, fake_publisher, partial(feed_of, records))
    try:
        deadline = time.monotonic() + 10
        while not process.group.windows() and time.monotonic() < deadline:
            time.sleep(0.05)
        [window] = process.group.windows()
        assert (window["logins"], window["instances"], window["records"]) == (60, ["a", "b"], 2)
        assert process.group.totals()["unreadable_records"] == 1
        assert [alert["rule"] for alert in process.group.alerts()] == ["credential_stuffing"]
    finally:
        process.close()


def test_without_a_feed_the_group_is_empty_and_the_child_still_counts(live):
    assert (live.group.windows(), live.group.totals(), live.group.alerts()) == ([], {}, [])
    live.observe(batch(), [(0, 21)], T0 + 30)
    assert live.snapshot()["open_windows"][0]["logins"] == 20
