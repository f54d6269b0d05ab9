"""The group's view of live insights (login_pipeline.live.GroupView) and what the HTTP server shows of it
(login_pipeline.web): partial records merged exactly, hostile records counted and skipped, whole
documents on /api/insights and /api/alerts, the dashboard served with nothing from elsewhere."""

from __future__ import annotations

import base64
import json
import urllib.request

import orjson
import pytest
from prometheus_client import CollectorRegistry

from kafka_consumer_processor import process_message
from login_pipeline import web
from login_pipeline.client import FeedRecord
from login_pipeline.live import KEPT_WINDOWS, SHOWN_WINDOWS, GroupView
from login_pipeline.live_logins import counted
from login_pipeline.status_server import StatusServer, Verdict
from login_pipeline.windows import TumblingWindows, iso

KEY = b"unit-test-key-0123456789"
T0 = 1_720_576_800


def window_record(users: range, instance: str, start: int = T0, partitions: set[int] = frozenset({0})) -> bytes:
    windows = TumblingWindows(60, 10, 30)
    logins = [
        process_message(json.dumps({"user_id": f"u{n}", "timestamp": start + n % 60}).encode(), start + 61, KEY)
        for n in users
    ]
    windows.observe(
        counted(logins),
        [(partition, len(logins) // len(partitions)) for partition in sorted(partitions)],
        start + 61,
        now=0,
    )
    [closed] = windows.flush("stop")
    return orjson.dumps(closed.summary.to_record(instance, "stop", start + 70))


def alert_record(rule: str = "credential_stuffing") -> bytes:
    return orjson.dumps(
        {
            "schema_version": 1,
            "rule": rule,
            "subject_kind": "ip_hash",
            "subject_hash": "ab" * 32,
            "evidence": {"distinct_users": 15},
            "threshold": 15,
            "window_s": 900,
            "first_seen": "2024-07-10T02:00:00Z",
            "last_seen": "2024-07-10T02:01:00Z",
            "instance": "host-1",
            "detected_at": "2024-07-10T02:01:01Z",
        }
    )


class Feeder:
    def __init__(self) -> None:
        self.view = GroupView("login-insights", "login-alerts")
        self.offsets: dict[str, int] = {}

    def give(self, topic: str, value: bytes | None) -> None:
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        self.view.take(FeedRecord(topic, 0, offset, value))


def test_two_instances_partials_of_one_window_merge_into_exact_counts():
    feeder = Feeder()
    feeder.give("login-insights", window_record(range(0, 600), "a", partitions={0, 2}))
    feeder.give("login-insights", window_record(range(400, 1000), "b", partitions={1}))
    [window] = feeder.view.windows()
    assert window["logins"] == 1200 and window["messages"] == 1200
    assert window["partitions"] == [0, 1, 2] and window["instances"] == ["a", "b"] and window["records"] == 2
    assert abs(window["distinct_users"] - 1000) <= 1000 * 3 * 0.0163  # users 400-599 were seen by both
    assert feeder.view.totals()["logins"] == 1200


def test_a_record_read_again_after_a_reconnect_counts_once():
    feeder = Feeder()
    record = window_record(range(10), "a")
    feeder.give("login-insights", record)
    feeder.view.take(FeedRecord("login-insights", 0, 0, record))
    assert feeder.view.totals()["logins"] == 10


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"schema_version": 1}',
        b"9" * (1024 * 1024 + 1),
        orjson.dumps({**json.loads(window_record(range(3), "a")), "logins": -5}),
        orjson.dumps(
            {**json.loads(window_record(range(3), "a")), "users_hll": base64.b64encode(b"\xff" * 4096).decode()}
        ),
        orjson.dumps({**json.loads(window_record(range(3), "a")), "users_hll": "!" * 5464}),
        orjson.dumps({**json.loads(window_record(range(3), "a")), "event_delay_buckets": {"9999": 1}}),
        orjson.dumps({**json.loads(window_record(range(3), "a")), "window_size_s": 0}),
        orjson.dumps({**json.loads(window_record(range(3), "a")), "extra": "<script>alert(1)</script>"}),
    ],
    ids=[
        "null",
        "empty",
        "not-utf8",
        "array",
        "fields-missing",
        "huge",
        "negative-count",
        "registers-out-of-range",
        "registers-not-base64",
        "bucket-out-of-range",
        "zero-size",
        "unknown-field",
    ],
)
def test_a_record_that_is_not_a_window_summary_is_counted_and_skipped(value):
    feeder = Feeder()
    feeder.give("login-insights", value)
    feeder.give("login-insights", window_record(range(7), "a"))
    assert feeder.view.totals()["logins"] == 7
    assert feeder.view.totals()["unreadable_records"] == 1


def test_a_record_that_is_not_an_alert_is_counted_and_skipped():
    feeder = Feeder()
    feeder.give("login-alerts", orjson.dumps({**json.loads(alert_record()), "subject_hash": "203.0.113.7"}))
    feeder.give("login-alerts", alert_record())
    assert len(feeder.view.alerts()) == 1 and feeder.view.unreadable == 1


def test_the_view_keeps_the_newest_windows_and_alerts_only():
    feeder = Feeder()
    for n in range(KEPT_WINDOWS + 5):
        feeder.give("login-insights", window_record(range(1), "a", start=T0 + 60 * n))
    for _ in range(150):
        feeder.give("login-alerts", alert_record())
    windows = feeder.view.windows()
    assert feeder.view.totals()["windows"] == KEPT_WINDOWS  # the five oldest went
    assert feeder.view.totals()["messages"] == KEPT_WINDOWS
    assert len(windows) == SHOWN_WINDOWS  # the API sends the newest hour, what the dashboard draws
    assert windows[0]["window_start"] == iso(T0 + 60 * (KEPT_WINDOWS + 4))
    assert windows[-1]["window_start"] == iso(T0 + 60 * (KEPT_WINDOWS + 5 - SHOWN_WINDOWS))
    assert len(feeder.view.alerts()) == 100


@pytest.fixture
def served():
    feeder = Feeder()
    feeder.give("login-insights", window_record(range(30), "a"))
    feeder.give("login-alerts", alert_record())
    pages = web.pages(lambda: {"instance": "host-1", "running_totals": {"processed": 30}}, feeder.view)
    server = StatusServer("127.0.0.1", 0, CollectorRegistry(), lambda: Verdict(True), lambda: Verdict(True), pages)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.status, dict(answer.headers), answer.read()


def test_api_insights_has_the_groups_windows_and_this_instances_totals(served):
    status, headers, body = get(served + "/api/insights")
    document = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert document["group"]["totals"]["logins"] == 30
    assert document["group"]["closed_windows"][0]["window_start"] == "2024-07-10T02:00:00Z"
    assert document["this_instance"]["running_totals"]["processed"] == 30


def test_api_alerts_lists_the_recent_alerts(served):
    _, _, body = get(served + "/api/alerts")
    assert [alert["rule"] for alert in json.loads(body)["alerts"]] == ["credential_stuffing"]


def test_the_dashboard_is_served_whole_with_nothing_from_elsewhere(served):
    status, headers, page = get(served + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for asset in (b"/dashboard.js", b"/dashboard.css"):
        assert asset in page
        assert get(served + asset.decode())[0] == 200
    for text in (page, get(served + "/dashboard.js")[2], get(served + "/dashboard.css")[2]):
        assert b"http://" not in text.replace(b"http://www.w3.org/2000/svg", b"")
        assert b"https://" not in text
    script = get(served + "/dashboard.js")[2]
    assert b"innerHTML" not in script  # data reaches the page as text only


def test_a_backlog_is_merged_in_bursts_with_nine_times_as_long_a_pause_after_each():
    from login_pipeline.live import FEED_BURST_S, FeedReader
    from tests.fakes import FakeFeed

    clock = [0.0]
    pauses: list[float] = []

    class SlowView(GroupView):
        def take(self, record: FeedRecord) -> None:
            clock[0] += 0.004  # each record takes 4 ms to merge
            super().take(record)

    view = SlowView("login-insights", "login-alerts")
    reader = FeedReader(FakeFeed([]), view, monotonic=lambda: clock[0], pause=pauses.append)
    records = [FeedRecord("login-insights", 0, offset, window_record(range(5), "a")) for offset in range(10)]
    reader.take(records)
    assert len(view.windows()) == 1 and view.windows()[0]["records"] == 10
    assert pauses == [pytest.approx(9 * 3 * 0.004)] * 3  # a pause after each 12 ms past FEED_BURST_S
    assert FEED_BURST_S < 3 * 0.004


# -- Records written by someone else: whatever passes the schema, what one can add stays bounded ----


def test_windows_dated_far_ahead_are_refused_and_never_push_the_real_ones_out():
    feeder = Feeder()
    feeder.give("login-insights", window_record(range(10), "real"))
    record = orjson.loads(window_record(range(3), "x"))
    year_9999 = 253402300740  # 9999-12-31T23:59:00Z, a valid window_start_ts
    for n in range(KEPT_WINDOWS + 5):
        start = year_9999 - 60 * n
        ahead = {**record, "window_start_ts": start, "window_start": iso(start), "instance": f"x{n}"}
        feeder.give("login-insights", orjson.dumps(ahead))
    assert [window["instances"] for window in feeder.view.windows()] == [["real"]]
    assert feeder.view.totals()["unreadable_records"] == KEPT_WINDOWS + 5


def test_a_window_merged_from_more_instances_than_a_group_runs_stops_growing():
    from login_pipeline.live import MAX_INSTANCES

    feeder = Feeder()
    record = orjson.loads(window_record(range(3), "a"))
    for n in range(MAX_INSTANCES + 50):
        feeder.give("login-insights", orjson.dumps({**record, "instance": f"i{n}"}))
    [window] = feeder.view.windows()
    assert window["instance_count"] == MAX_INSTANCES and window["logins"] == 3 * MAX_INSTANCES
    assert feeder.view.totals()["unreadable_records"] == 50


def test_a_window_over_more_partitions_than_a_topic_has_is_refused():
    from login_pipeline.live import MAX_PARTITIONS

    feeder = Feeder()
    record = orjson.loads(window_record(range(3), "a"))
    feeder.give("login-insights", orjson.dumps({**record, "partitions": list(range(100_000))}))
    for n in range(3):
        part = list(range(n * MAX_PARTITIONS // 2, (n + 1) * MAX_PARTITIONS // 2))
        feeder.give("login-insights", orjson.dumps({**record, "instance": f"i{n}", "partitions": part}))
    [window] = feeder.view.windows()
    assert window["partition_count"] == MAX_PARTITIONS and window["records"] == 2
    assert feeder.view.totals()["unreadable_records"] == 2


@pytest.mark.parametrize(
    "field, value",
    [
        ("subject_hash", "ab" * 32 + "\n"),
        ("detected_at", "x" * 1_000_000),
        ("detected_at", "2024-07-10T02:01:01Z\n"),
        ("first_seen", "２０２４-07-10T02:00:00Z"),
    ],
)
def test_an_alert_with_an_unbounded_or_loosely_matched_string_is_not_shown(field, value):
    feeder = Feeder()
    feeder.give("login-alerts", orjson.dumps({**orjson.loads(alert_record()), field: value}))
    feeder.give("login-alerts", alert_record())
    assert len(feeder.view.alerts()) == 1 and feeder.view.totals()["unreadable_records"] == 1


def poisoned_window(start: int, instance: str) -> bytes:
    """What anyone who can write login-insights can send: a valid record at every bound of the schema
    a record of 1 MiB allows, with values no other record shares."""
    record = orjson.loads(window_record(range(3), "x", start=start))
    tag = instance[-8:]
    segments = [[f"d{tag}{n:067}", f"l{tag}{n:067}", f"v{tag}{n:067}", 1] for n in range(4096)]
    record.update(
        window_start_ts=start,
        window_start=iso(start),
        instance=instance.rjust(128, "i"),
        segments=segments,
        segments_other=10**9,
        partitions=list(range(0, 10_000, 7)),
        rejected={f"{tag}{n:056}": 1 for n in range(16)},
    )
    value = orjson.dumps(record)
    assert len(value) <= 1024 * 1024
    return value


@pytest.mark.slow  # traces every allocation of 240 records of 1 MiB
def test_poisoned_window_records_hold_bounded_memory_and_a_bounded_answer_and_the_real_window_shows():
    # Reproduced on a running processor: 120 such records held +220 MiB and made /api/insights 103 MiB.
    import tracemalloc

    feeder = Feeder()
    real_start = T0 + 60 * 200
    feeder.give("login-insights", window_record(range(30), "real", start=real_start))
    # a second record of each window is merged into the first
    records = [
        poisoned_window(real_start - 60 * (n + 1), f"{n:04}{copy:04}") for n in range(KEPT_WINDOWS) for copy in (0, 1)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for record in records:
            feeder.give("login-insights", record)
        del record
        kept = tracemalloc.get_traced_memory()[0] - before
        body = orjson.dumps(web.insights({}, feeder.view), option=orjson.OPT_INDENT_2)
    finally:
        tracemalloc.stop()
    assert kept < 16 * 1024 * 1024, kept  # held by the view, after every record was merged
    assert len(body) < 1024 * 1024, len(body)
    windows = feeder.view.windows()
    assert windows[0]["instances"] == ["real"] and windows[0]["logins"] == 30
    poisoned = windows[1]
    assert poisoned["records"] == 2 and poisoned["partition_count"] == len(range(0, 10_000, 7))
    for name in ("device_types", "locales", "app_versions"):
        shares = poisoned[name]
        assert len(shares["counts"]) == 20
        # exact: what is not shown is in `other`; every login of both records' segments is counted
        assert sum(shares["counts"].values()) + shares["other"] == 2 * (4096 + 10**9)
