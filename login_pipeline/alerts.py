"""Suspicious-login rules over delivered logins, in memory bounded per rule. No I/O here.

Each rule keeps state per subject (an ip hash, a device hash, a user) in a `KeyedState`: entries
expire once older than the rule's window, and past `capacity` subjects the least recently seen go
(to within a generation of capacity / 2) and are counted (`evicted`), so a flood of distinct users
or addresses cannot grow memory.
An eviction can only cost an alert (that subject starts again from nothing), never raise a false one.

Times are event times (login_ts): a replayed backlog raises the alerts it would have raised live.
An alert names its subject only by hash: ip and device are the processed record's HMACs, a user id
is hashed with the same key (`pseudonymize`). A subject that fired is quiet for one window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from login_pipeline.live_logins import Counted
from login_pipeline.results import Rejection
from login_pipeline.windows import iso

RULES = ("credential_stuffing", "locale_hopping", "shared_device", "login_burst")


@dataclass(frozen=True)
class RuleSettings:
    threshold: int
    window_s: int


@dataclass(frozen=True)
class AlertSettings:
    """Thresholds and windows of the four rules; their defaults are the ALERT_* settings' (login_pipeline.config;
    README "Alert rules" says where each comes from)."""

    credential_stuffing: RuleSettings  # distinct users from one ip
    locale_hopping: RuleSettings  # distinct locales of one user
    shared_device: RuleSettings  # distinct users of one device
    login_burst: RuleSettings  # logins of one user
    capacity: int  # subjects kept per rule


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


class KeyedState:
    """Entries per subject in two generations of plain dicts; see the module's doc.

    An entry is a tuple whose first item is the subject's last event time, replaced whole on update:
    tuples and dicts of strings and numbers are not tracked by Python's cyclic garbage collector,
    which otherwise walked every entry again and again (measured: the four rules took 10.2 us a
    login at 100,000 distinct subjects with list entries, 4.6 with tuples).

    New and re-seen subjects go to the young generation; when it holds half the capacity it becomes
    the old one and the old one goes (its entries still within their window counted as `evicted`).
    So at most `capacity` subjects are kept, and every subject seen within the last capacity / 2 new
    ones is among them: least recently seen go first, to within a generation. Plain dicts, not an
    LRU in an OrderedDict: two lookups a login, and no eviction scans (a plain dict kept in LRU
    order scanned the holes at its front on every eviction: 39 us a login).

    A rule reads a subject's entry as `young.get(key) or old.pop(key, None)`, in its own code rather
    than through a method (a call per rule and login cost 0.15 us, timeit): one taken from the old
    generation leaves it, and the rule `put`s it back, into the young one.
    """

    def __init__(self, capacity: int, ttl_s: int) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.generation = max(capacity // 2, 1)  # entries a generation holds
        self.young: dict[str, tuple[Any, ...]] = {}
        self.old: dict[str, tuple[Any, ...]] = {}
        self._young_since: Optional[float] = None  # event time when the young generation began
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.young) + len(self.old)

    def put(self, key: str, entry: tuple[Any, ...]) -> None:
        young = self.young
        if key not in young:
            if len(young) >= self.generation:
                self.evicted += sum(1 for old in self.old.values() if old[0] + self.ttl_s > entry[0])
                self.old, young, self._young_since = young, {}, entry[0]
                self.young = young
            elif self._young_since is None:
                self._young_since = entry[0]
        young[key] = entry

    def expire(self, watermark: float) -> None:
        """Once the young generation is a window old, the old one holds only expired entries: drop it."""
        if self._young_since is not None and watermark - self._young_since >= self.ttl_s:
            self.old, self.young, self._young_since = self.young, {}, watermark


class DistinctRule:
    """Fires when one subject has `threshold` distinct members within `window_s` of event time.

    Entry: (last event time, {member: its last event time} (at most threshold - 1 kept between
    logins), event time it last fired or None); while a subject has one member, the member itself
    stands for the dict: most subjects are seen once, and a dict each cost 0.3 us a login.
    """

    def __init__(self, name: str, subject_kind: str, evidence: str, settings: RuleSettings, capacity: int) -> None:
        self.name, self.subject_kind, self.evidence = name, subject_kind, evidence
        self.threshold, self.window_s = settings.threshold, settings.window_s
        self.state = KeyedState(capacity, settings.window_s)

    def observe(self, subject: str, member: str, event_time: int) -> Optional[tuple[int, int]]:
        """(count, oldest member's time) when this login crosses the threshold, else None."""
        state = self.state
        young = state.young
        entry = young.get(subject) or state.old.pop(subject, None)  # see KeyedState
        if entry is None or entry[0] + self.window_s <= event_time:
            if len(young) < state.generation:
                young[subject] = (event_time, member, None)
            else:
                state.put(subject, (event_time, member, None))
            return None  # one member: below every threshold (2 at least)
        last, members, fired_at = entry
        if members.__class__ is str:
            if member == members:
                state.put(subject, (max(event_time, last), members, fired_at))
                return None
            members = {members: last}
            state.put(subject, (max(event_time, last), members, fired_at))
        elif event_time > last or subject not in young:
            state.put(subject, (max(event_time, last), members, fired_at))
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
        if fired_at is not None and event_time < fired_at + self.window_s:
            return None
        state.put(subject, (max(event_time, last), members, event_time))
        return self.threshold, first_seen


class BurstRule:
    """Fires when one user logs in `threshold` times within `window_s` of event time.

    Entry: (last event time, the newest `threshold` login times, event time it last fired or None).
    """

    name, subject_kind, evidence = "login_burst", "user_id_hash", "logins"

    def __init__(self, settings: RuleSettings, capacity: int) -> None:
        self.threshold, self.window_s = settings.threshold, settings.window_s
        self.state = KeyedState(capacity, settings.window_s)

    def observe(self, user: str, event_time: int) -> Optional[tuple[int, int]]:
        state = self.state
        young = state.young
        entry = young.get(user) or state.old.pop(user, None)  # see KeyedState
        if entry is None or entry[0] + self.window_s <= event_time:
            if len(young) < state.generation:
                young[user] = (event_time, (event_time,), None)
            else:
                state.put(user, (event_time, (event_time,), None))
            return None
        last, times, fired_at = entry
        times = (*times[1 - self.threshold :], event_time) if len(times) >= self.threshold else (*times, event_time)
        crossed = (
            len(times) == self.threshold
            and event_time - min(times) < self.window_s
            and (fired_at is None or event_time >= fired_at + self.window_s)
        )
        state.put(user, (max(event_time, last), times, event_time if crossed else fired_at))
        return (self.threshold, min(times)) if crossed else None


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

    def observe(self, results: list[Counted]) -> list[Alert]:
        alerts: list[Alert] = []
        stuffing, locales, devices, burst = self.stuffing, self.locales, self.devices, self.burst
        for record in results:
            if isinstance(record, Rejection):
                continue
            # A login stamped in the future counts at its processing time, as in the windows.
            event_time = record.login_ts if record.event_delay_s >= 0 else int(record.login_ts + record.event_delay_s)
            if event_time > self.watermark:
                self.watermark = event_time
            user = record.user_id
            ip_hash = record.ip_hash
            if ip_hash is not None:
                crossed = stuffing.observe(ip_hash, user, event_time)
                if crossed:
                    alerts.append(self._alert(stuffing, ip_hash, crossed, event_time))
            device_hash = record.device_id_hash
            if device_hash is not None:
                crossed = devices.observe(device_hash, user, event_time)
                if crossed:
                    alerts.append(self._alert(devices, device_hash, crossed, event_time))
            locale = record.locale
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

    def states(self) -> list[KeyedState]:
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
