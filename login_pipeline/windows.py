"""Event-time tumbling windows over delivered messages, each closed into one mergeable summary. No I/O here.

Contract of `TumblingWindows`:
- A valid login counts in the window of its login_ts; one stamped after the time it was processed
  counts at its processing time instead (`clock_ahead_events`), so a clock far ahead cannot close
  every window at once. A rejected message has no event time to trust: it counts in the window of
  the time it was processed.
- The watermark is the oldest of the partitions' newest event times (a partition that delivered
  nothing for `idle_s` is left out, so one quiet partition does not hold every window open; one
  just assigned holds it until it delivers, or idle_s after the next delivery): the
  partitions of one instance are read in no particular order against each other, and the newest
  time of the fastest would make the others' logins late. A window closes when the watermark
  passes its end plus `grace_s`, and also, when nothing at all was delivered for `idle_s`, once the
  wall clock passes its end plus grace: the last window of a quiet stream is not held back forever.
- A login for a window that has ended, in its partition's event time, but not closed is counted
  in it (`late_events`); one for a
  window already closed is counted, as `too_late_events`, in the window of its processing time. No
  message is dropped uncounted.
- At most MAX_OPEN_WINDOWS are open; opening one more closes the oldest early ("capacity"), even
  inside one batch, so memory stays bounded whatever the timestamps.
- `flush(reason)` closes every open window as it stands (a stop, a revoke): a later summary of the
  same window, from this process or another, adds to it exactly (`WindowSummary.merge`). So a
  restart or a rebalance loses nothing; a crash loses the open windows' counts of what was
  committed before it.

The summaries are computed from the messages whose batch the output acknowledged, like the insights:
a retried batch counts once.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional

import msgspec

from login_pipeline.live_logins import Counted
from login_pipeline.results import Rejection
from login_pipeline.sketches import CappedCounts, HyperLogLog, LogHistogram

MAX_OPEN_WINDOWS = 64
Span = tuple[int, int]  # (input partition, how many consecutive results of a batch came from it)
# (device type, locale, app version) combinations counted exactly per window; one dict update a login
# instead of three. Real traffic has hundreds; what does not fit is reported as "other".
SEGMENT_CAPACITY = 4096
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class WindowSettings:
    size_s: int
    grace_s: int
    idle_s: int


@dataclass(eq=False)  # compared by identity: an open window is one object, updated in place
class WindowSummary:
    """What one window saw, in one process or merged from several: every field adds up exactly."""

    start: int  # epoch seconds
    size_s: int
    messages: int = 0
    logins: int = 0
    repaired: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    late_events: int = 0
    too_late_events: int = 0
    clock_ahead_events: int = 0
    segments: CappedCounts = field(default_factory=lambda: CappedCounts(SEGMENT_CAPACITY))
    users: HyperLogLog = field(default_factory=HyperLogLog)
    delay: LogHistogram = field(default_factory=LogHistogram)
    partitions: set[int] = field(default_factory=set)

    @property
    def end(self) -> int:
        return self.start + self.size_s

    def merge(self, other: WindowSummary) -> None:
        """Add another summary of the same window (another process's partitions, or a later part)."""
        if (other.start, other.size_s) != (self.start, self.size_s):
            raise ValueError("summaries of different windows do not merge")
        self.messages += other.messages
        self.logins += other.logins
        self.repaired += other.repaired
        self.rejected.update(other.rejected)
        self.late_events += other.late_events
        self.too_late_events += other.too_late_events
        self.clock_ahead_events += other.clock_ahead_events
        self.segments.merge(other.segments)
        self.users.merge(other.users)
        self.delay.merge_counts(other.delay.counts(), other.delay.sum)
        self.partitions |= other.partitions

    def to_record(self, instance: str, closed_by: str, emitted_at: float) -> dict[str, Any]:
        """The login-insights record (schemas/login-insights.schema.json)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "window_start": iso(self.start),
            "window_start_ts": self.start,
            "window_size_s": self.size_s,
            "instance": instance,
            "partitions": sorted(self.partitions),
            "closed_by": closed_by,
            "emitted_at": iso(emitted_at),
            "messages": self.messages,
            "logins": self.logins,
            "repaired": self.repaired,
            "rejected": dict(sorted(self.rejected.items())),
            "late_events": self.late_events,
            "too_late_events": self.too_late_events,
            "clock_ahead_events": self.clock_ahead_events,
            "segments": [[*segment, count] for segment, count in sorted(self.segments.counts.items())],
            "segments_other": self.segments.other,
            "distinct_users": self.users.count(),
            "users_hll": base64.b64encode(self.users.registers).decode(),
            "event_delay_s": self.delay.percentiles(),
            "event_delay_buckets": {str(index): count for index, count in self.delay.counts().items()},
            "event_delay_sum_s": self.delay.sum,
        }

    @classmethod
    def from_record(cls, value: bytes) -> tuple[WindowSummary, str]:
        """The summary a login-insights record's value carries, and the instance that wrote it.

        ValueError when it is not one: not JSON, not schemas/login-insights.schema.json (WindowRecord
        checks it, in C), or registers that are not base64.
        """
        record = _decode_window_record(value)
        summary = cls(record.window_start_ts, record.window_size_s)
        summary.messages = record.messages
        summary.logins = record.logins
        summary.repaired = record.repaired
        summary.rejected = Counter(record.rejected)
        summary.late_events = record.late_events
        summary.too_late_events = record.too_late_events
        summary.clock_ahead_events = record.clock_ahead_events
        for *segment, count in record.segments:
            summary.segments.add_count(tuple(segment), count)
        summary.segments.other += record.segments_other
        summary.segments.total += record.segments_other
        summary.users = HyperLogLog(base64.b64decode(record.users_hll, validate=True))
        summary.delay.merge_counts(
            {int(index): count for index, count in record.event_delay_buckets.items()}, record.event_delay_sum_s
        )
        summary.partitions = set(record.partitions)
        return summary, record.instance


# schemas/login-insights.schema.json as types. Decoding a record against them checks it as the schema
# does, in C: 0.02 ms a record of 6 KB, against 1 ms for jsonschema on the parsed record (timeit),
# when a group view reads two hours of a busy group back. tests/test_windows.py holds the two to each
# other: whatever these accept, the schema accepts. They are stricter in one way only: a count
# written as 1.0 (an integer to JSON Schema) is refused.
_Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000_000)]
_Text = Annotated[str, msgspec.Meta(max_length=256)]
# ASCII digits (Python's \d takes every script's), and a fixed length: "$" also matches before a final "\n".
_IsoSeconds = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$", min_length=20, max_length=20)
]


class _DelayPercentiles(msgspec.Struct, forbid_unknown_fields=True):
    p50: Optional[float] = None
    p95: Optional[float] = None
    p99: Optional[float] = None


class WindowRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    schema_version: Literal[1]
    window_start: _IsoSeconds
    window_start_ts: Annotated[int, msgspec.Meta(ge=0, le=253402300799)]
    window_size_s: Annotated[int, msgspec.Meta(ge=1, le=86400)]
    instance: Annotated[str, msgspec.Meta(max_length=128)]
    partitions: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=100_000)]
    closed_by: Literal["event_time", "idle", "capacity", "revoke", "stop"]
    emitted_at: _IsoSeconds
    messages: _Count
    logins: _Count
    repaired: _Count
    rejected: Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], _Count], msgspec.Meta(max_length=16)]
    late_events: _Count
    too_late_events: _Count
    clock_ahead_events: _Count
    segments: Annotated[list[tuple[_Text, _Text, _Text, _Count]], msgspec.Meta(max_length=4096)]
    segments_other: _Count
    distinct_users: _Count
    users_hll: Annotated[str, msgspec.Meta(min_length=5464, max_length=5464)]
    event_delay_s: _DelayPercentiles
    event_delay_buckets: Annotated[
        dict[Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,4}\Z")], _Count], msgspec.Meta(max_length=1000)
    ]
    event_delay_sum_s: Annotated[float, msgspec.Meta(ge=0)]


_decode_window_record = msgspec.json.Decoder(WindowRecord).decode


@dataclass(frozen=True)
class Closed:
    """A window this process closed, and why: event_time, idle, capacity, revoke or stop."""

    summary: WindowSummary
    closed_by: str


class TumblingWindows:
    """Open windows of this process, fed whole delivered batches; see the module's contract."""

    def __init__(self, size_s: int, grace_s: int, idle_s: float, users_key: bytes = b"") -> None:
        self.users_key = users_key  # the windows' HyperLogLogs are published: keyed (sketches.HyperLogLog)
        self.size_s = size_s
        self.grace_s = grace_s
        self.idle_s = idle_s
        self.open: dict[int, WindowSummary] = {}  # by start
        self.watermark: Optional[float] = None
        self._newest: dict[int, float] = {}  # partition -> newest event time delivered from it
        self._delivered_at: dict[int, float] = {}  # partition -> monotonic time of its last delivery
        self._assigned_waiting: set[int] = set()
        self.closed_through: Optional[int] = None  # the end of the newest window closed for good
        self._last_delivery: Optional[float] = None
        self._closed_early: list[Closed] = []  # closed for capacity inside `observe`, handed out by `due`

    def observe(self, results: list[Counted], spans: list[Span], processed_at: float, now: float) -> None:
        """Count a delivered batch: `spans` says which partition each run of `results` came from, in order.

        `processed_at`: when the batch was processed (wall clock); `now`: monotonic time.
        """
        self._last_delivery = now
        for waiting in self._assigned_waiting:
            self._delivered_at.setdefault(waiting, now)
        self._assigned_waiting.clear()
        size, grace, open_windows = self.size_s, self.grace_s, self.open
        processing_start = int(processed_at) // size * size
        # Lateness is judged against the watermark as the batch began: one batch, one rule.
        watermark = self.watermark
        closed_through = self.closed_through
        newest = self._newest
        # Each window's segments, users and delays of this batch, added at the end in one call each.
        added: dict[WindowSummary, tuple[list, list, list]] = {}
        position = 0
        for partition, count in spans:
            touched: set[WindowSummary] = set()
            partition_newest = newest.get(partition)
            for result in results[position : position + count]:
                if isinstance(result, Rejection):
                    window = open_windows.get(processing_start) or self._window(processing_start)
                    window.messages += 1
                    window.rejected[result.reason] += 1
                    touched.add(window)
                    continue
                event_time = result.login_ts
                delay = result.event_delay_s
                start = event_time // size * size
                if delay < 0:  # stamped in the future: counted when it was processed
                    window = open_windows.get(processing_start) or self._window(processing_start)
                    window.clock_ahead_events += 1
                    delay = 0.0
                elif (closed_through is not None and start < closed_through) or (
                    watermark is not None and start + size + grace <= watermark
                ):
                    window = open_windows.get(processing_start) or self._window(processing_start)
                    window.too_late_events += 1
                else:
                    window = open_windows.get(start) or self._window(start)
                    if partition_newest is None or event_time > partition_newest:
                        partition_newest = event_time
                    elif start + size <= partition_newest:
                        window.late_events += 1
                touched.add(window)
                window.messages += 1
                window.logins += 1
                if result.repaired_fields:
                    window.repaired += 1
                segments, users, delays = added.get(window) or added.setdefault(window, ([], [], []))
                segments.append((result.device_type, result.locale, result.app_version))
                users.append(result.user_id)
                delays.append(delay)
            position += count
            if partition_newest is not None:
                newest[partition] = partition_newest
            self._delivered_at[partition] = now
            for window in touched:
                window.partitions.add(partition)
        for window, (segments, users, delays) in added.items():
            window.segments.add_all(segments)
            window.users.add_all(users)
            window.delay.add_all(delays)
        self.watermark = self._watermark(now)

    def assigned(self, partitions: set[int]) -> None:
        """Partitions now held: each holds the watermark until it delivers, or until idle_s has passed
        since this process's next delivery (an assignment may come long before any record does)."""
        self._assigned_waiting |= partitions - set(self._delivered_at)

    def _watermark(self, now: float) -> Optional[float]:
        """The oldest of the partitions' newest event times, leaving out partitions idle for idle_s;
        it does not move while an active partition has delivered nothing yet."""
        active = [partition for partition, at in self._delivered_at.items() if now - at < self.idle_s]
        if any(partition not in self._newest for partition in active):
            return self.watermark
        times = [self._newest[partition] for partition in active]
        return min(times) if times else self.watermark

    def due(self, wall_clock: float, now: float) -> list[Closed]:
        """The windows that close now, oldest first: past capacity, by event time, or by wall clock when idle."""
        closed, self._closed_early = self._closed_early, []
        idle = self._last_delivery is None or now - self._last_delivery >= self.idle_s
        self.watermark = self._watermark(now)
        for start in sorted(self.open):
            end_with_grace = start + self.size_s + self.grace_s
            if self.watermark is not None and self.watermark >= end_with_grace:
                closed.append(Closed(self.open.pop(start), "event_time"))
            elif idle and wall_clock >= end_with_grace:
                closed.append(Closed(self.open.pop(start), "idle"))
            else:
                continue
            self.closed_through = max(self.closed_through or 0, start + self.size_s)
        return closed

    def flush(self, reason: str) -> list[Closed]:
        """Every open window as it stands, oldest first; later logins of those windows open new partial ones."""
        closed = self._closed_early + [Closed(self.open[start], reason) for start in sorted(self.open)]
        self._closed_early = []
        self.open.clear()
        # The partitions may go elsewhere (a revoke): their event times no longer hold the watermark back.
        self._newest.clear()
        self._delivered_at.clear()
        return closed

    def _window(self, start: int) -> WindowSummary:
        """A new open window; at capacity the oldest closes first, so no batch can open thousands."""
        if len(self.open) >= MAX_OPEN_WINDOWS:
            oldest = min(self.open)
            self._closed_early.append(Closed(self.open.pop(oldest), "capacity"))
            self.closed_through = max(self.closed_through or 0, oldest + self.size_s)
        window = self.open[start] = WindowSummary(start, self.size_s, users=HyperLogLog(key=self.users_key))
        return window


def iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
