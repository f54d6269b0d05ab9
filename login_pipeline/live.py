"""Live insights: this process's windows and alerts, published as they close, and the group's view read back.

Two halves, meeting only in Kafka:
- `LiveInsights`, the run loop's side (run in a child process by login_pipeline.live_process, so it
  costs the run loop little). `observe` takes each delivered batch and publishes the alerts it
  raises; `tick` publishes the windows that closed; `flush` publishes every open window as a
  partial record before partitions go (a revoke) or the process ends (a stop), and waits a
  bounded time for them.
  Publishing never blocks the loop longer than the Publisher's bound; a record it cannot publish is
  counted and logged, and processing goes on: these records are derived, the input is not held
  back for them.
- `GroupView`, fed by a `FeedReader` thread from the login-insights and login-alerts topics: every
  instance's partial records, checked against schemas/ and merged per window, and the recent
  alerts. So any instance's /api/insights and dashboard show the whole group. It runs in the live
  insights' process too, so reading a backlog of those topics never competes with the run loop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol

import jsonschema
import orjson

from login_pipeline import live_logins
from login_pipeline.alerts import Alert, AlertRules, AlertSettings
from login_pipeline.client import Feed, FeedRecord, Publisher
from login_pipeline.insights import SHOWN_VALUES
from login_pipeline.live_logins import Counted
from login_pipeline.results import ProcessingResult
from login_pipeline.sketches import CappedCounts, HyperLogLog
from login_pipeline.windows import Closed, Span, TumblingWindows, WindowSettings, WindowSummary, iso

log = logging.getLogger(__name__)

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
KEPT_WINDOWS = 120  # merged windows the view keeps (two hours of one-minute windows), added up in the totals
SHOWN_WINDOWS = 60  # the newest of them /api/insights sends: the dashboard draws the last hour
KEPT_ALERTS = 100
MAX_WINDOW_AHEAD_S = 600  # clocks of a group's hosts differ by less
MAX_INSTANCES = 256  # processors one window is merged from
MAX_PARTITIONS = 10_000  # input partitions one window is merged over (Kafka's own advice stays far below)
MAX_REASONS = 64  # distinct rejection reasons one window is merged over (the rules have a dozen)
# Per merged window, per field (device type, locale, app version): the distinct values kept, each
# counted exactly, the rest in `other`. Whoever writes login events could otherwise make each
# window hold 4,096 segments of the longest values.
KEPT_VALUES = 64  # and the API sends the insights' SHOWN_VALUES most frequent of them
SHOWN_NAMES = 32  # instance names and partition numbers a window lists; the counts are exact
SHARE_FIELDS = ("device_types", "locales", "app_versions")  # in the order of a segment's values
FEED_POLL_S = 1.0
FEED_TIME_SHARE = 0.1  # of the time, at most, the group view's reader spends merging (FeedReader)
FEED_BURST_S = 0.01
# A window record is about 9 KB, and up to about 700 KB with 4,096 segments of the longest values;
# nothing of ours is over Kafka's default 1 MiB.
MAX_FEED_RECORD_BYTES = 1024 * 1024


class Live(Protocol):
    """What the run loop asks of the live insights (LiveInsights, or login_pipeline.live_process's
    LiveProcess, which runs one in a child). Every method may block only briefly, except `flush`
    (at most its timeout); `snapshot` may be called from any thread."""

    def observe(self, results: list[ProcessingResult], spans: list[Span], processed_at: float) -> None: ...
    def assigned(self, partitions: set[int]) -> None: ...
    def tick(self) -> None: ...
    def flush(self, reason: str, timeout_s: float) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class GroupReadings(Protocol):
    """What the HTTP server shows of the group: GroupView, or the live insights' process asked for it."""

    def windows(self) -> list[dict[str, Any]]: ...
    def totals(self) -> dict[str, Any]: ...
    def alerts(self) -> list[dict[str, Any]]: ...


def instance_name() -> str:
    """Which processor this is, in records and on the dashboard: host and process id (never input data)."""
    return f"{socket.gethostname()[:100]}-{os.getpid()}"


class LiveSettings(NamedTuple):
    """What the live insights need of the configuration."""

    insights_topic: str
    alerts_topic: str
    windows: WindowSettings
    alerts: AlertSettings


class LiveInsights:
    """The run loop's side; see the module's doc. Thread-safe: `snapshot` may come from HTTP threads."""

    def __init__(
        self,
        settings: LiveSettings,
        publisher: Publisher,
        pseudonymize: Callable[[str], str],
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        instance: str | None = None,
        users_key: bytes = b"",
    ) -> None:
        """`users_key` keys the distinct-user sketches the windows publish (derived from PII_HASH_KEY, so
        every instance of a group shares it and their windows merge)."""
        self._publisher = publisher
        self._insights_topic = settings.insights_topic
        self._alerts_topic = settings.alerts_topic
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self.instance = instance or instance_name()
        windows = settings.windows
        self.windows = TumblingWindows(windows.size_s, windows.grace_s, windows.idle_s, users_key)
        self.rules = AlertRules(settings.alerts, pseudonymize)
        self.windows_published = 0
        self.alerts_raised: dict[str, int] = {}  # by rule: four keys at most

    def observe(self, results: list[ProcessingResult], spans: list[Span], processed_at: float) -> None:
        self.observe_counted(live_logins.counted(results), spans, processed_at)

    def observe_counted(self, counted: list[Counted], spans: list[Span], processed_at: float) -> None:
        """`observe`, of a batch already decoded (login_pipeline.live_logins)."""
        with self._lock:
            self.windows.observe(counted, spans, processed_at, self._monotonic())
            for alert in self.rules.observe(counted):
                self._publish_alert(alert)

    def assigned(self, partitions: set[int]) -> None:
        with self._lock:
            self.windows.assigned(partitions)

    def tick(self) -> None:
        with self._lock:
            self._publish(self.windows.due(self._wall_clock(), self._monotonic()))
            self.rules.expire()

    def flush(self, reason: str, timeout_s: float) -> None:
        """Every open window as a partial record; waits at most `timeout_s` for the cluster to take them."""
        with self._lock:
            self._publish(self.windows.flush(reason))
        undelivered = self._publisher.flush(timeout_s)
        if undelivered:
            log.error("%d window or alert records were not acknowledged within %.0f s", undelivered, timeout_s)

    def close(self) -> None:
        self._publisher.close()

    def snapshot(self) -> dict[str, Any]:
        """This instance's open windows and counters, for /api/insights and the metrics."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        windows = self.windows
        return {
            "instance": self.instance,
            "insights_topic": self._insights_topic,
            "window_size_s": windows.size_s,
            "window_grace_s": windows.grace_s,
            "open_windows": [window_view(window) for _, window in sorted(windows.open.items())],
            "windows_published": self.windows_published,
            "alerts_raised": dict(sorted(self.alerts_raised.items())),
            "alert_subjects_kept": sum(len(state) for state in self.rules.states()),
            "alert_subjects_evicted": self.rules.evicted(),
            "publish_failures": self.publish_failures,
        }

    @property
    def publish_failures(self) -> int:
        return self._publisher.failed

    def _publish(self, closed: list[Closed]) -> None:
        now = self._wall_clock()
        for window in closed:
            record = window.summary.to_record(self.instance, window.closed_by, now)
            self._publisher.publish(self._insights_topic, record["window_start"].encode(), orjson.dumps(record))
            self.windows_published += 1

    def _publish_alert(self, alert: Alert) -> None:
        record = alert.to_record(self.instance, self._wall_clock())
        self._publisher.publish(self._alerts_topic, alert.subject_hash.encode(), orjson.dumps(record))
        self.alerts_raised[alert.rule] = self.alerts_raised.get(alert.rule, 0) + 1


@dataclass
class MergedWindow:
    """A window as the view keeps it: the summary's counts, with its segments and partitions held
    in bounded forms of their own."""

    summary: WindowSummary  # its segments and partitions emptied: they are kept below
    shares: tuple[CappedCounts[str], ...]  # logins by value, one per SHARE_FIELDS
    partitions: int  # a bit per input partition
    instances: set[str]
    records: int

    @classmethod
    def first(cls, summary: WindowSummary, instance: str) -> MergedWindow:
        merged = cls(summary, _no_shares(), 0, set(), 0)
        merged._take(summary, instance)
        return merged

    def add(self, summary: WindowSummary, instance: str) -> None:
        """Another record of the window, once it passed the view's bounds."""
        self._take(summary, instance)
        self.summary.merge(summary)

    def _take(self, summary: WindowSummary, instance: str) -> None:
        """The record's segments and partitions into their bounded forms, out of its summary."""
        self.partitions |= partition_bits(summary.partitions)
        shares_of(summary, self.shares)
        summary.segments, summary.partitions = CappedCounts(0), set()
        self.instances.add(instance)
        self.records += 1


def shares_of(
    summary: WindowSummary, into: tuple[CappedCounts[str], ...] | None = None
) -> tuple[CappedCounts[str], ...]:
    """The summary's segments counted per field, into `into` (or new counts of KEPT_VALUES each); what
    did not fit in the summary's own segments is `other` in every field."""
    shares = into or _no_shares()
    for segment, count in summary.segments.counts.items():
        for field_shares, value in zip(shares, segment):
            field_shares.add_count(value, count)
    for field_shares in shares:
        field_shares.other += summary.segments.other
        field_shares.total += summary.segments.other
    return shares


def _no_shares() -> tuple[CappedCounts[str], ...]:
    return tuple(CappedCounts[str](KEPT_VALUES) for _ in SHARE_FIELDS)


def partition_bits(partitions: set[int]) -> int:
    """The partitions as bits of one integer: 10,000 partitions are 1.25 KB, not a set of 500 KB."""
    bits = 0
    for partition in partitions:
        bits |= 1 << partition
    return bits


class GroupView:
    """Closed windows (merged across every instance's partial records) and recent alerts, read from Kafka.

    Thread-safe: the feed thread adds, HTTP threads read. A record that is not valid JSON, fails its
    schema, or carries registers that are not a HyperLogLog's is counted in `unreadable` and skipped;
    a record read twice (a reconnect reads from the same time again) is counted once.

    Whoever can write the topics can send any valid record, so what one can add is bounded too, and
    what would pass a bound is skipped as unreadable: a window starting more than
    MAX_WINDOW_AHEAD_S after the wall clock (no processor opens one: a login stamped ahead counts
    at its processing time), which would otherwise push every real window out for good; a window
    merged from more than MAX_INSTANCES instances, over a partition numbered MAX_PARTITIONS or more,
    or over more than MAX_REASONS rejection reasons. A merged window holds KEPT_VALUES values a
    field (MergedWindow), and what `windows()` answers is bounded as well (window_view).
    """

    def __init__(self, insights_topic: str, alerts_topic: str, wall_clock: Callable[[], float] = time.time) -> None:
        self._insights_topic = insights_topic
        self._alerts_topic = alerts_topic
        self._wall_clock = wall_clock
        self._windows: dict[tuple[int, int], MergedWindow] = {}
        self._alerts: deque[dict[str, Any]] = deque(maxlen=KEPT_ALERTS)
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self.unreadable = 0

    def take(self, record: FeedRecord) -> None:
        with self._lock:
            position = (record.topic, record.partition)
            if record.offset < self._next_offsets.get(position, 0):
                return
            self._next_offsets[position] = record.offset + 1
            try:
                if record.value is None or len(record.value) > MAX_FEED_RECORD_BYTES:
                    raise ValueError("not a record of ours")
                if record.topic == self._insights_topic:
                    self._merge(*WindowSummary.from_record(record.value))
                elif record.topic == self._alerts_topic:
                    value = orjson.loads(record.value)
                    _validator("login-alerts").validate(value)
                    self._alerts.appendleft(value)
            except (ValueError, KeyError, TypeError, jsonschema.ValidationError):
                self.unreadable += 1

    def _merge(self, summary: WindowSummary, instance: str) -> None:
        if summary.start > self._wall_clock() + MAX_WINDOW_AHEAD_S:
            raise ValueError("a window that has not begun")
        key = (summary.start, summary.size_s)
        merged = self._windows.get(key)
        if merged is not None and instance not in merged.instances and len(merged.instances) >= MAX_INSTANCES:
            raise ValueError("more instances than a group runs")
        # A partition numbered MAX_PARTITIONS or more means more partitions than that, and no huge integer.
        if summary.partitions and max(summary.partitions) >= MAX_PARTITIONS:
            raise ValueError("more partitions than a topic has")
        if merged is not None:
            reasons = summary.rejected.keys() | merged.summary.rejected.keys()
            if len(reasons) > MAX_REASONS:
                raise ValueError("more rejection reasons than the rules have")
            merged.add(summary, instance)
            return
        if len(self._windows) >= KEPT_WINDOWS:
            oldest = min(self._windows)
            if key < oldest:
                return  # older than every window kept: not shown
            del self._windows[oldest]
        self._windows[key] = MergedWindow.first(summary, instance)

    def windows(self) -> list[dict[str, Any]]:
        """The SHOWN_WINDOWS newest merged closed windows, newest first, as the API shows them."""
        with self._lock:
            newest = sorted(self._windows.items(), reverse=True)[:SHOWN_WINDOWS]
            return [
                {
                    **window_view(merged.summary, merged.shares, merged.partitions),
                    "instances": sorted(merged.instances)[:SHOWN_NAMES],
                    "instance_count": len(merged.instances),
                    "records": merged.records,
                }
                for _, merged in newest
            ]

    def totals(self) -> dict[str, Any]:
        """The closed windows kept, added up: counts exact, distinct users from the merged registers."""
        with self._lock:
            users = HyperLogLog()
            totals = {"windows": len(self._windows), "messages": 0, "logins": 0, "rejected": 0}
            for merged in self._windows.values():
                summary = merged.summary
                totals["messages"] += summary.messages
                totals["logins"] += summary.logins
                totals["rejected"] += sum(summary.rejected.values())
                users.merge(summary.users)
            return {**totals, "distinct_users": users.count(), "unreadable_records": self.unreadable}

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._alerts)


def window_view(
    summary: WindowSummary, shares: tuple[CappedCounts[str], ...] | None = None, partitions: int | None = None
) -> dict[str, Any]:
    """A window as the API and the dashboard show it (no registers or buckets), bounded in size
    whatever the data: SHOWN_VALUES values a field and SHOWN_NAMES partitions, with exact remainders.
    `shares` and `partitions` are a merged window's; an open window's come from its summary."""
    shares = shares or shares_of(summary)
    partitions = partition_bits(summary.partitions) if partitions is None else partitions
    return {
        "window_start": iso(summary.start),
        "window_size_s": summary.size_s,
        "partitions": _lowest_bits(partitions, SHOWN_NAMES),
        "partition_count": partitions.bit_count(),
        "messages": summary.messages,
        "logins": summary.logins,
        "repaired": summary.repaired,
        "rejected": dict(sorted(summary.rejected.items())),
        "late_events": summary.late_events,
        "too_late_events": summary.too_late_events,
        "clock_ahead_events": summary.clock_ahead_events,
        "distinct_users": summary.users.count(),
        **{name: field_shares.shown(SHOWN_VALUES) for name, field_shares in zip(SHARE_FIELDS, shares)},
        "event_delay_s": summary.delay.percentiles(),
    }


def _lowest_bits(bits: int, n: int) -> list[int]:
    lowest: list[int] = []
    while bits and len(lowest) < n:
        low = bits & -bits
        lowest.append(low.bit_length() - 1)
        bits ^= low
    return lowest


class FeedReader:
    """A thread that hands every record of a Feed to a GroupView until stopped.

    It takes at most FEED_TIME_SHARE of the time: after every FEED_BURST_S spent merging records,
    it pauses nine times as long. A backlog (two hours of a busy group, or whatever others wrote to
    the topics) is read back over a few seconds more, rather than taking a core from the processor
    while it starts: 20,000 window records are 2 s of merging, read in about 20 s.
    """

    def __init__(
        self,
        feed: Feed,
        view: GroupView,
        monotonic: Callable[[], float] = time.monotonic,
        pause: Callable[[float], object] | None = None,
    ) -> None:
        self._feed = feed
        self._view = view
        self._stop = threading.Event()
        self._monotonic = monotonic
        self._pause = pause or self._stop.wait
        self._thread = threading.Thread(target=self._read, name="insights-feed", daemon=True)

    def start(self) -> FeedReader:
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                self.take(self._feed.poll(FEED_POLL_S))
        except Exception as error:  # the view must not take the process down; it only stops updating
            log.error("reading the insights topics stopped: %s", type(error).__name__)
        finally:
            self._feed.close()

    def take(self, records: list[FeedRecord]) -> None:
        """Merge `records` into the view, pausing to keep within FEED_TIME_SHARE."""
        busy = 0.0
        for record in records:
            started = self._monotonic()
            self._view.take(record)
            busy += self._monotonic() - started
            if busy >= FEED_BURST_S:
                self._pause(busy * (1 - FEED_TIME_SHARE) / FEED_TIME_SHARE)
                busy = 0.0
                if self._stop.is_set():
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=FEED_POLL_S + 10)


@lru_cache(maxsize=2)
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)
