"""Suspicious-login rules over delivered logins, in memory bounded per rule. No I/O here.

Each rule keeps state per subject (an ip hash, a device hash, a user) in a `KeyedState`: entries
expire once older than the rule's window, and past `capacity` subjects the least recently seen one
is evicted and counted (`evicted`), so a flood of distinct users or addresses cannot grow memory.
An eviction can only cost an alert (that subject starts again from nothing), never raise a false one.

Times are event times (login_ts): a replayed backlog raises the alerts it would have raised live.
An alert names its subject only by hash: ip and device are the processed record's HMACs, a user id
is hashed with the same key (`pseudonymize`). A subject that fired is quiet for one window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

from login_pipeline.results import ProcessedLogin, ProcessingResult
from login_pipeline.windows import iso

State = TypeVar("State")
RULES = ("credential_stuffing", "locale_hopping", "shared_device", "login_burst")


@dataclass(frozen=True)
class RuleSettings:
    threshold: int
    window_s: int


@dataclass(frozen=True)
class AlertSettings:
    """Thresholds and windows of the four rules (README "Alert rules" says where each default comes from)."""

    credential_stuffing: RuleSettings = RuleSettings(15, 900)  # distinct users from one ip in 15 min
    locale_hopping: RuleSettings = RuleSettings(3, 3 * 3600)  # distinct locales of one user in 3 h
    shared_device: RuleSettings = RuleSettings(10, 3600)  # distinct users of one device in 1 h
    login_burst: RuleSettings = RuleSettings(20, 60)  # logins of one user in 1 min
    capacity: int = 50_000  # subjects kept per rule


@dataclass(frozen=True)
class Alert:
    """One suspicious-login signal: a login-alerts record (schemas/login-alerts.schema.json)."""

    rule: str
    subject_kind: str  # ip_hash, device_id_hash or user_id_hash
    subject_hash: str
    evidence: str  # what was counted: distinct_users, distinct_locales or logins
    count: int
    threshold: int
    window_s: int
    first_seen: int  # event time of the oldest login counted
    last_seen: int  # event time of the login that crossed the threshold

    def to_record(self, instance: str, detected_at: float) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "rule": self.rule,
            "subject_kind": self.subject_kind,
            "subject_hash": self.subject_hash,
            "evidence": {self.evidence: self.count},
            "threshold": self.threshold,
            "window_s": self.window_s,
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "instance": instance,
            "detected_at": iso(detected_at),
        }


class KeyedState(Generic[State]):
    """State per key, least recently seen first (a dict keeps insertion order); see the module's doc."""

    def __init__(self, capacity: int, ttl_s: int, new: Callable[[], State]) -> None:
        self._capacity = capacity
        self._ttl_s = ttl_s
        self._new = new
        self._entries: dict[str, tuple[int, State]] = {}  # key -> (last event time, state)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def touch(self, key: str, event_time: int) -> State:
        """The key's state, fresh when unknown or expired; the key becomes the most recently seen."""
        entries = self._entries
        entry = entries.pop(key, None)
        if entry is None or entry[0] + self._ttl_s <= event_time:
            state = self._new()
            if len(entries) >= self._capacity:
                oldest = next(iter(entries))
                if entries.pop(oldest)[0] + self._ttl_s > event_time:
                    self.evicted += 1  # still live: that subject's evidence is lost
        else:
            state = entry[1]
        entries[key] = (max(event_time, entry[0]) if entry else event_time, state)
        return state

    def expire(self, watermark: float) -> None:
        """Drop entries older than the window from the least recently seen end (cheap, amortized)."""
        entries = self._entries
        while entries:
            key = next(iter(entries))
            if entries[key][0] + self._ttl_s > watermark:
                return
            del entries[key]


class _Distinct:
    """Members seen of one subject within the window (at most `threshold` kept), and when it last fired."""

    __slots__ = ("members", "fired_at")

    def __init__(self) -> None:
        self.members: dict[str, int] = {}  # member -> last event time
        self.fired_at: Optional[int] = None


class DistinctRule:
    """Fires when one subject has `threshold` distinct members within `window_s` of event time."""

    def __init__(self, name: str, subject_kind: str, evidence: str, settings: RuleSettings, capacity: int) -> None:
        self.name, self.subject_kind, self.evidence = name, subject_kind, evidence
        self.threshold, self.window_s = settings.threshold, settings.window_s
        self.state: KeyedState[_Distinct] = KeyedState(capacity, settings.window_s, _Distinct)

    def observe(self, subject: str, member: str, event_time: int) -> Optional[tuple[int, int]]:
        """(count, oldest member's time) when this login crosses the threshold, else None."""
        state = self.state.touch(subject, event_time)
        members = state.members
        if member in members:
            if event_time > members[member]:
                members[member] = event_time
            return None
        members[member] = event_time
        if len(members) < self.threshold:
            return None
        oldest_allowed = event_time - self.window_s
        for old in [m for m, seen in members.items() if seen <= oldest_allowed]:
            del members[old]
        if len(members) < self.threshold:
            return None
        first_seen = min(members.values())
        # Keep the newest threshold - 1: the next new member is judged against them, memory stays bounded.
        while len(members) >= self.threshold:
            del members[min(members, key=members.__getitem__)]
        if state.fired_at is not None and event_time < state.fired_at + self.window_s:
            return None
        state.fired_at = event_time
        return self.threshold, first_seen


class _Burst:
    """The newest `threshold` login times of one user, and when it last fired."""

    __slots__ = ("times", "fired_at")

    def __init__(self, threshold: int) -> None:
        self.times: deque[int] = deque(maxlen=threshold)
        self.fired_at: Optional[int] = None


class BurstRule:
    """Fires when one user logs in `threshold` times within `window_s` of event time."""

    name, subject_kind, evidence = "login_burst", "user_id_hash", "logins"

    def __init__(self, settings: RuleSettings, capacity: int) -> None:
        self.threshold, self.window_s = settings.threshold, settings.window_s
        self.state: KeyedState[_Burst] = KeyedState(capacity, settings.window_s, lambda: _Burst(self.threshold))

    def observe(self, user: str, event_time: int) -> Optional[tuple[int, int]]:
        state = self.state.touch(user, event_time)
        times = state.times
        times.append(event_time)
        if len(times) < self.threshold or event_time - min(times) >= self.window_s:
            return None
        if state.fired_at is not None and event_time < state.fired_at + self.window_s:
            return None
        state.fired_at = event_time
        return self.threshold, min(times)


class AlertRules:
    """The four rules; `observe` takes a delivered batch and returns the alerts it raised, in order."""

    def __init__(self, settings: AlertSettings, pseudonymize: Callable[[str], str]) -> None:
        capacity = settings.capacity
        self.stuffing = DistinctRule(
            "credential_stuffing", "ip_hash", "distinct_users", settings.credential_stuffing, capacity
        )
        self.locales = DistinctRule(
            "locale_hopping", "user_id_hash", "distinct_locales", settings.locale_hopping, capacity
        )
        self.devices = DistinctRule(
            "shared_device", "device_id_hash", "distinct_users", settings.shared_device, capacity
        )
        self.burst = BurstRule(settings.login_burst, capacity)
        self._pseudonymize = pseudonymize
        self.watermark = 0

    def observe(self, results: list[ProcessingResult]) -> list[Alert]:
        alerts: list[Alert] = []
        stuffing, locales, devices, burst = self.stuffing, self.locales, self.devices, self.burst
        for result in results:
            if result.__class__ is not ProcessedLogin:
                continue
            record = result.record
            # A login stamped in the future counts at its processing time, as in the windows.
            event_time = (
                record["login_ts"]
                if record["event_delay_s"] >= 0
                else int(record["login_ts"] + record["event_delay_s"])
            )
            if event_time > self.watermark:
                self.watermark = event_time
            user = record["user_id"]
            ip_hash = record["ip_hash"]
            if ip_hash is not None:
                crossed = stuffing.observe(ip_hash, user, event_time)
                if crossed:
                    alerts.append(self._alert(stuffing, ip_hash, crossed, event_time))
            device_hash = record["device_id_hash"]
            if device_hash is not None:
                crossed = devices.observe(device_hash, user, event_time)
                if crossed:
                    alerts.append(self._alert(devices, device_hash, crossed, event_time))
            locale = record["locale"]
            if locale != "unknown":
                crossed = locales.observe(user, locale, event_time)
                if crossed:
                    alerts.append(self._alert(locales, self._pseudonymize(user), crossed, event_time))
            crossed = burst.observe(user, event_time)
            if crossed:
                alerts.append(self._alert(burst, self._pseudonymize(user), crossed, event_time))
        return alerts

    def expire(self) -> None:
        """Forget what is older than each rule's window; call once a batch."""
        for state in self.states():
            state.expire(self.watermark)

    def states(self) -> list[KeyedState[Any]]:
        return [self.stuffing.state, self.locales.state, self.devices.state, self.burst.state]

    def evicted(self) -> int:
        return sum(state.evicted for state in self.states())

    @staticmethod
    def _alert(rule: DistinctRule | BurstRule, subject_hash: str, crossed: tuple[int, int], event_time: int) -> Alert:
        count, first_seen = crossed
        return Alert(
            rule.name,
            rule.subject_kind,
            subject_hash,
            rule.evidence,
            count,
            rule.threshold,
            rule.window_s,
            first_seen,
            event_time,
        )
