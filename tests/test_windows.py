"""The event-time windows' specification (login_pipeline.windows): on time, late, too late, idle, restart."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_consumer_processor import process_message
from login_pipeline.live_logins import counted
from login_pipeline.results import ProcessingResult
from login_pipeline.windows import MAX_OPEN_WINDOWS, TumblingWindows, WindowSummary

KEY = b"unit-test-key-0123456789"
T0 = 1_720_576_800  # a minute boundary: 2024-07-10T02:00:00Z


def login(at: int, user: str = "u1", processed_at: float | None = None, **fields: str) -> ProcessingResult:
    event = {"user_id": user, "timestamp": at, "device_type": "ios", "locale": "en-US", "app_version": "2.1", **fields}
    return process_message(json.dumps(event).encode(), processed_at or at + 1.0, KEY)


def junk(processed_at: float) -> ProcessingResult:
    return process_message(b"{not json", processed_at, KEY)


def observe(
    w: TumblingWindows, results: list[ProcessingResult], partition: int, processed_at: float, now: float
) -> None:
    """A batch from one partition."""
    w.observe(counted(results), [(partition, len(results))], processed_at, now)


def windows(grace: int = 10, idle: float = 30) -> TumblingWindows:
    return TumblingWindows(60, grace, idle)


def closed_starts(closed) -> list[tuple[int, str]]:
    return [(window.summary.start - T0, window.closed_by) for window in closed]


def test_logins_count_in_the_window_of_their_event_time():
    w = windows()
    observe(w, [login(T0 + 5), login(T0 + 59), login(T0 + 60)], partition=0, processed_at=T0 + 61, now=0)
    assert {start - T0: s.logins for start, s in w.open.items()} == {0: 2, 60: 1}


def test_a_window_closes_when_event_time_passes_its_end_plus_grace():
    w = windows(grace=10)
    observe(w, [login(T0 + 5), login(T0 + 69)], partition=0, processed_at=T0 + 70, now=0)
    assert w.due(T0 + 70, now=0) == []  # watermark 69 < 60 + 10
    observe(w, [login(T0 + 70)], partition=0, processed_at=T0 + 71, now=1)
    assert closed_starts(w.due(T0 + 71, now=1)) == [(0, "event_time")]


def test_a_late_login_within_grace_counts_in_its_window_as_late():
    w = windows(grace=10)
    observe(w, [login(T0 + 65), login(T0 + 30)], partition=0, processed_at=T0 + 66, now=0)
    window = w.open[T0]
    assert (window.logins, window.late_events) == (1, 1)


def test_a_login_for_a_closed_window_is_counted_too_late_at_its_processing_time_never_dropped():
    w = windows(grace=10)
    observe(w, [login(T0 + 5), login(T0 + 75)], partition=0, processed_at=T0 + 76, now=0)
    [first] = w.due(T0 + 76, now=0)
    observe(w, [login(T0 + 10, processed_at=T0 + 130)], partition=0, processed_at=T0 + 130, now=1)
    assert first.summary.logins == 1
    assert T0 not in w.open
    assert (w.open[T0 + 120].logins, w.open[T0 + 120].too_late_events) == (1, 1)


def test_grace_zero_closes_at_the_end():
    w = windows(grace=0)
    observe(w, [login(T0 + 5), login(T0 + 60)], partition=0, processed_at=T0 + 61, now=0)
    assert closed_starts(w.due(T0 + 61, now=0)) == [(0, "event_time")]


def test_a_quiet_stream_closes_its_last_window_by_wall_clock_once_idle():
    w = windows(grace=10, idle=30)
    observe(w, [login(T0 + 5)], partition=0, processed_at=T0 + 6, now=100.0)
    assert w.due(T0 + 100, now=129.0) == []  # not idle long enough yet
    assert w.due(T0 + 69, now=131.0) == []  # idle, but the wall clock is not past end + grace
    assert closed_starts(w.due(T0 + 70, now=131.0)) == [(0, "idle")]
    observe(w, [login(T0 + 20, processed_at=T0 + 140)], partition=0, processed_at=T0 + 140, now=140.0)
    assert w.open[T0 + 120].too_late_events == 1  # closed by idle is closed for good


def test_a_busy_stream_never_closes_by_wall_clock():
    """A backlog hours old keeps coming: its windows close by event time only, not one per batch."""
    w = windows(grace=10, idle=30)
    observe(w, [login(T0 + 5)], partition=0, processed_at=T0 + 7200, now=100.0)
    assert w.due(T0 + 7200, now=110.0) == []


def test_a_clock_far_ahead_cannot_close_every_window():
    w = windows()
    observe(w, [login(T0 + 5), login(T0 + 3600, processed_at=T0 + 6)], partition=0, processed_at=T0 + 6, now=0)
    assert w.due(T0 + 6, now=0) == []
    assert w.watermark == T0 + 5
    assert (w.open[T0].logins, w.open[T0].clock_ahead_events) == (2, 1)


def test_rejections_count_in_the_window_of_their_processing_time():
    w = windows()
    observe(w, [login(T0 + 5, processed_at=T0 + 125), junk(T0 + 125)], partition=0, processed_at=T0 + 125, now=0)
    assert w.open[T0].messages == 1
    assert (w.open[T0 + 120].messages, dict(w.open[T0 + 120].rejected)) == (1, {"malformed_json": 1})


def test_open_windows_are_capped_even_inside_one_batch_and_the_oldest_close_early():
    w = windows(grace=86_400)
    observe(w, [login(T0 + 60 * n) for n in range(MAX_OPEN_WINDOWS + 3)], partition=0, processed_at=T0 + 86_400, now=0)
    assert len(w.open) == MAX_OPEN_WINDOWS
    closed = w.due(T0, now=0)
    assert closed_starts(closed) == [(0, "capacity"), (60, "capacity"), (120, "capacity")]
    observe(w, [login(T0 + 30)], partition=0, processed_at=T0 + 86_400, now=0)
    assert w.open[T0 + 86_400 - 86_400 % 60].too_late_events == 1  # its window was closed: counted, not lost


def test_partitions_are_those_whose_records_a_window_counted():
    w = windows()
    w.observe(counted([login(T0 + 5), login(T0 + 6), login(T0 + 65)]), [(0, 1), (2, 1), (3, 1)], T0 + 66, now=0)
    observe(w, [login(T0 + 7)], partition=1, processed_at=T0 + 8, now=0)
    assert (w.open[T0].partitions, w.open[T0 + 60].partitions) == ({0, 1, 2}, {3})


def test_a_partition_read_ahead_of_another_does_not_make_the_others_logins_late():
    """One poll brings partition 0 up to minute 3 and partition 1 from minute 0: nothing is late."""
    w = windows(grace=2)
    ahead = [login(T0 + 60 * n) for n in range(4)]
    behind = [login(T0 + 60 * n + 1) for n in range(4)]
    w.observe(counted(ahead + behind), [(0, 4), (1, 4)], T0 + 300, now=0)
    assert sum(window.too_late_events for window in w.open.values()) == 0
    assert w.open[T0].logins == 2
    assert closed_starts(w.due(T0 + 300, now=0)) == [(0, "event_time"), (60, "event_time")]  # 120 + 60 + 2 > 180


def test_a_partition_that_went_quiet_stops_holding_the_windows_open():
    w = windows(grace=2, idle=30)
    observe(w, [login(T0 + 5)], partition=0, processed_at=T0 + 6, now=0)
    observe(w, [login(T0 + 130)], partition=1, processed_at=T0 + 131, now=31)
    assert closed_starts(w.due(T0 + 131, now=31)) == [(0, "event_time")]


def test_a_restart_flushes_partials_that_add_up_to_what_one_process_would_have_seen():
    events = [login(T0 + n % 60, user=f"u{n}", device_type=["ios", "android"][n % 2]) for n in range(500)]
    whole = windows()
    observe(whole, events, partition=0, processed_at=T0 + 61, now=0)
    before, after = windows(), windows()
    observe(before, events[:200], partition=0, processed_at=T0 + 61, now=0)
    [partial] = before.flush("stop")
    observe(after, events[200:], partition=0, processed_at=T0 + 61, now=0)
    [rest] = after.flush("stop")
    assert partial.closed_by == "stop"
    merged, _ = WindowSummary.from_record(json.dumps(partial.summary.to_record("a", "stop", T0)).encode())
    merged.merge(WindowSummary.from_record(json.dumps(rest.summary.to_record("b", "stop", T0)).encode())[0])
    expected = whole.open[T0]
    assert merged.logins == expected.logins == 500
    assert merged.users.registers == expected.users.registers  # distinct users merge exactly
    assert merged.segments.counts == expected.segments.counts and merged.segments.other == expected.segments.other == 0
    assert sum(count for segment, count in merged.segments.counts.items() if segment[0] == "ios") == 250
    assert merged.delay.counts() == expected.delay.counts()


def test_after_a_revoke_flush_the_same_window_opens_again_as_a_new_partial():
    w = windows()
    observe(w, [login(T0 + 5)], partition=0, processed_at=T0 + 6, now=0)
    [first] = w.flush("revoke")
    observe(w, [login(T0 + 7)], partition=1, processed_at=T0 + 8, now=0)
    assert first.summary.logins == 1
    assert (w.open[T0].logins, w.open[T0].too_late_events) == (1, 0)


def test_a_record_round_trips_through_its_json():
    w = windows()
    observe(
        w, [login(T0 + 5, user=f"u{n}") for n in range(50)] + [junk(T0 + 6)], partition=3, processed_at=T0 + 6, now=0
    )
    [closed] = w.flush("stop")
    record = closed.summary.to_record("host-1", "stop", T0 + 100)
    again, instance = WindowSummary.from_record(json.dumps(record).encode())
    assert again.to_record("host-1", "stop", T0 + 100) == record and instance == "host-1"
    assert record["window_start"] == "2024-07-10T02:00:00Z"
    assert (record["messages"], record["logins"], record["rejected"]) == (51, 50, {"malformed_json": 1})
    assert record["distinct_users"] == 50


def test_summaries_of_different_windows_do_not_merge():
    with pytest.raises(ValueError):
        WindowSummary(T0, 60).merge(WindowSummary(T0 + 60, 60))


def test_a_partition_just_assigned_holds_the_watermark_until_it_delivers():
    """A poll may bring one partition's whole backlog before the next partition's first record."""
    w = windows(grace=2, idle=30)
    w.assigned({0, 1})
    observe(w, [login(T0 + 60 * n) for n in range(4)], partition=0, processed_at=T0 + 300, now=100)
    assert w.due(T0 + 300, now=101) == []  # assigned long before, yet partition 1 is waited for
    observe(w, [login(T0 + 1)], partition=1, processed_at=T0 + 300, now=102)
    assert w.open[T0].too_late_events == 0 and w.open[T0].logins == 2
    assert closed_starts(w.due(T0 + 300, now=102)) == []  # partition 1 is at T0 + 1 now
    idle = [(start, "idle") for start in (0, 60, 120, 180)]
    assert closed_starts(w.due(T0 + 300, now=132)) == idle  # ...until the input has been quiet for idle_s


# -- A record read back is checked in C (WindowRecord); never more loosely than the published schema --
HOSTILE_VALUES = [
    None,
    True,
    0,
    -1,
    1.0,
    1.5,
    10**12,
    10**12 + 1,
    2**63,
    "",
    "x" * 65,
    "x" * 257,
    "2024-07-10T02:00:00Z\n",
    "２０２４-07-10T02:00:00Z",
    "12345",
    "1" * 5464,
    [],
    [1, 2],
    [["ios", "RI", "2.3.0", 1]],
    [["ios", "RI", "2.3.0"]],
    [["ios", "RI", "2.3.0", -1]],
    [["x" * 257, "RI", "2.3.0", 1]],
    {},
    {"p50": "1"},
    {"a": 1},
    {"x" * 65: 1},
    {"12345": 1},
    {"1": -1},
    {str(n): 1 for n in range(17)},
]


def a_record() -> dict:
    w = windows()
    observe(
        w, [login(T0 + 5, user=f"u{n}") for n in range(20)] + [junk(T0 + 6)], partition=1, processed_at=T0 + 6, now=0
    )
    [closed] = w.flush("stop")
    return closed.summary.to_record("host-1", "stop", T0 + 100)


RECORD = a_record()


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([*RECORD, "unknown_field"]), st.sampled_from([*HOSTILE_VALUES, "DELETE"])),
        min_size=1,
        max_size=3,
    )
)
def test_what_the_c_check_accepts_the_published_schema_accepts(changes):
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).parent.parent / "schemas" / "login-insights.schema.json").read_text())
    record = dict(RECORD)
    for name, value in changes:
        if value == "DELETE":
            record.pop(name, None)
        else:
            record[name] = value
    raw = json.dumps(record).encode()
    try:
        WindowSummary.from_record(raw)
    except ValueError:
        return  # refused: shown as unreadable, never merged
    jsonschema.validate(record, schema)


def test_every_record_of_ours_is_accepted_by_both():
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).parent.parent / "schemas" / "login-insights.schema.json").read_text())
    jsonschema.validate(RECORD, schema)
    summary, instance = WindowSummary.from_record(json.dumps(RECORD).encode())
    assert (summary.logins, instance) == (20, "host-1")


@pytest.mark.parametrize(
    "name, value",
    [
        ("window_start", "2024-07-10T02:00:00Z\n"),  # "$" alone lets a final newline through
        ("window_start", "２０２４-07-10T02:00:00Z"),  # digits of another script
        ("emitted_at", "x" * 1_000_000),
        ("emitted_at", "2024-07-10T02:01:40Z\n"),
        ("event_delay_buckets", {"12\n": 1}),
    ],
)
def test_a_string_of_a_record_read_back_is_bounded_and_matched_whole(name, value):
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).parent.parent / "schemas" / "login-insights.schema.json").read_text())
    record = {**RECORD, name: value}
    assert not jsonschema.Draft202012Validator(schema).is_valid(record)
    with pytest.raises(ValueError):
        WindowSummary.from_record(json.dumps(record).encode())


def test_without_the_key_the_published_registers_tell_no_more_than_chance_who_logged_in():
    from hashlib import blake2b

    from login_pipeline.sketches import HyperLogLog

    def flagged(registers: bytes, user: str) -> bool:
        """The attack on an unkeyed sketch: hash the candidate, look at its register."""
        x = int.from_bytes(blake2b(user.encode(), digest_size=8).digest(), "big")
        rest = 64 - HyperLogLog.PRECISION
        return registers[x >> rest] == rest - (x & ((1 << rest) - 1)).bit_length() + 1

    members = [f"member-{n}" for n in range(20)]
    for key, expected_members_flagged in ((b"", 20), (b"k" * 32, None)):
        w = TumblingWindows(60, 10, 30, users_key=key)
        observe(w, [login(T0 + 5, user=user) for user in members], partition=0, processed_at=T0 + 6, now=0)
        [closed] = w.flush("stop")
        registers = base64.b64decode(closed.summary.to_record("a", "stop", T0 + 70)["users_hll"])
        hits = sum(flagged(registers, user) for user in members)
        if expected_members_flagged is not None:
            assert hits == expected_members_flagged  # unkeyed: every member shows
        else:
            assert hits <= 2  # keyed: a member shows no more often than a stranger would (about 0.2 %)
        assert abs(closed.summary.users.count() - 20) <= 1  # the estimate is as good either way
