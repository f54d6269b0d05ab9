"""Running insights over every processed message, in memory that does not grow with users or uptime.

Every number printed is exact, or says how far off it can be: counts and shares are exact (values
beyond the counters' capacity are shown as "other"); distinct users are a HyperLogLog estimate with
its standard error; delay percentiles are read from buckets 5 % wide. Values that came from the
input are escaped and truncated before they reach the terminal.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from login_pipeline.results import ProcessedLogin, ProcessingResult
from login_pipeline.sketches import CappedCounts, HyperLogLog, LogHistogram, MinuteCounts
from login_pipeline.windows import iso

TOP_N = 5
SHOWN_VALUES = 20  # values a field /api/insights sends, the most frequent; `other` counts the rest
SHOWN_CHARS = 24  # an input value is cut to this many characters on the terminal


class Insights:
    """Counts, heavy hitters, distinct users, logins per minute and event delay, rendered as a text block."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._started = self._last_render = clock()
        self._processed_at_last_render = 0
        self.processed = 0
        self.valid = 0
        self.repaired = 0
        self.rejected: Counter[str] = Counter()  # by reason: a handful of keys, never one per user
        self.newest_login_ts: float | None = None
        self._users = HyperLogLog()
        self._device_types: CappedCounts[str] = CappedCounts()
        self._locales: CappedCounts[str] = CappedCounts()
        self._app_versions: CappedCounts[str] = CappedCounts()
        self._per_minute = MinuteCounts()
        self.delay = LogHistogram()

    def observe(self, results: list[ProcessingResult]) -> None:
        """Count a delivered batch's messages: column by column, not record by record (on the run
        loop's thread; 3.0 -> 1.9 us a message, timeit over 20,000 logins in batches of 2,000)."""
        logins = [result.record for result in results if isinstance(result, ProcessedLogin)]
        self.processed += len(results)
        if len(logins) < len(results):
            self.rejected.update(result.reason for result in results if not isinstance(result, ProcessedLogin))
        if not logins:
            return
        self.valid += len(logins)
        self.repaired += sum(1 for record in logins if record["repaired_fields"])
        self._users.add_all([record["user_id"] for record in logins])
        self._device_types.add_all([record["device_type"] for record in logins])
        self._locales.add_all([record["locale"] for record in logins])
        self._app_versions.add_all([record["app_version"] for record in logins])
        login_times = [record["login_ts"] for record in logins]
        delays = [record["event_delay_s"] for record in logins]
        newest = max(login_times)
        if self.newest_login_ts is None or newest > self.newest_login_ts:
            self.newest_login_ts = newest
        per_minute = self._per_minute.add
        for login_ts, delay in zip(login_times, delays):
            per_minute(login_ts, login_ts + delay)
        self.delay.add_all([max(delay, 0.0) for delay in delays])

    def reading(self) -> Insights:
        """A copy that later batches leave as it is, for readers on other threads (the metrics and the
        API): the run loop publishes one after each batch, so no reader ever holds it back, and every
        figure a reader takes from one agrees with the others (whole batches only). 26 µs a copy
        against 3.6 ms to observe a batch of 2,000 (timeit)."""
        twin = _copied(self)
        for name, value in vars(self).items():
            if isinstance(value, (HyperLogLog, CappedCounts, LogHistogram, MinuteCounts)):
                setattr(twin, name, _copied(value))
        return twin

    def distinct_users(self) -> int:
        return self._users.count()

    def snapshot(self, lag: int | None) -> dict[str, Any]:
        """The running totals as the API shows them: the same figures as the printed block, values as JSON."""
        now = self._clock()
        return {
            "uptime_s": round(now - self._started, 1),
            "processed": self.processed,
            "valid": self.valid,
            "repaired": self.repaired,
            "rejected": dict(sorted(self.rejected.items())),
            "throughput_msg_s": round(self.processed / max(now - self._started, 1e-9), 1),
            "consumer_lag": lag,
            "distinct_users": self._users.count(),
            "distinct_users_standard_error": HyperLogLog.STANDARD_ERROR,
            "device_types": self._device_types.shown(SHOWN_VALUES),
            "locales": self._locales.shown(SHOWN_VALUES),
            "app_versions": self._app_versions.shown(SHOWN_VALUES),
            "logins_per_minute": [[iso(minute), count] for minute, count in self._per_minute.newest(10)],
            "event_delay_s": self.delay.percentiles(),
        }

    def render(self, lag: int | None, title: str = "insights") -> str:
        now = self._clock()
        recent = (self.processed - self._processed_at_last_render) / max(now - self._last_render, 1e-9)
        overall = self.processed / max(now - self._started, 1e-9)
        self._last_render, self._processed_at_last_render = now, self.processed
        rejected = ", ".join(f"{reason} {count:,}" for reason, count in sorted(self.rejected.items())) or "none"
        p50, p95 = self.delay.quantile(0.50), self.delay.quantile(0.95)
        lines = [
            f"── {title}: {self.processed:,} messages, up {_duration(now - self._started)} " + "─" * 20,
            f"processed {self.processed:,}   valid {self.valid:,} ({_share(self.valid, self.processed)})"
            f"   repaired {self.repaired:,}   rejected {sum(self.rejected.values()):,}: {rejected}",
            f"throughput    {recent:,.0f} msg/s now, {overall:,.0f} msg/s overall"
            f"   consumer lag {'unknown' if lag is None else f'{lag:,}'}",
            f"users         ~{self._users.count():,} distinct"
            f" (estimate, standard error {100 * HyperLogLog.STANDARD_ERROR:.1f}%)",
            f"device types  {_top(self._device_types)}",
            f"locales       {_top(self._locales)}",
            f"app versions  {_top(self._app_versions)}",
            "logins/min    "
            + (
                "  ".join(
                    f"{datetime.fromtimestamp(minute, timezone.utc):%H:%M} {count:,}"
                    for minute, count in self._per_minute.newest(TOP_N)
                )
                or "-"
            )
            + _not_counted(self._per_minute),
            f"event delay   p50 {_duration(p50)}   p95 {_duration(p95)} (within 5%)",
        ]
        return "\n".join(lines)


def _copied(thing: Any) -> Any:
    """A shallow copy whose containers are copies too."""
    twin = copy.copy(thing)
    for name, value in vars(thing).items():
        if isinstance(value, (dict, list, bytearray, set)):
            setattr(twin, name, value.copy())
    return twin


def _top(counts: CappedCounts[str]) -> str:
    shown = [f"{printable(value)} {_share(count, counts.total)}" for value, count in counts.top(TOP_N)]
    if counts.other:
        shown.append(f"other {_share(counts.other, counts.total)}")
    return "  ".join(shown) or "-"


def _not_counted(minutes: MinuteCounts) -> str:
    skipped = [
        f"{count:,} {what}"
        for count, what in ((minutes.future, "stamped in the future"), (minutes.dropped, "older than the window"))
        if count
    ]
    return f"   (not counted: {', '.join(skipped)})" if skipped else ""


def printable(value: str, limit: int = SHOWN_CHARS) -> str:
    """The value as it is safe to print: control and format characters escaped, cut to `limit` characters.

    A device_type of "\\x1b]0;owned\\x07" would otherwise retitle the operator's terminal, and a newline
    would forge a line of the block.
    """
    if not value.isprintable():
        value = "".join(char if char.isprintable() else repr(char)[1:-1] for char in value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
