"""The suspicious-login rules' specification (login_pipeline.alerts): each rule just below and at its
threshold, at the edge of its window, once per window, and in memory that stays bounded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import jsonschema

from kafka_consumer_processor import process_message
from login_pipeline.alerts import AlertRules, AlertSettings, KeyedState, RuleSettings
from login_pipeline.config import defaults
from login_pipeline.live import SCHEMAS
from login_pipeline.live_logins import counted
from login_pipeline.results import ProcessingResult

KEY = b"unit-test-key-0123456789"
T0 = 1_720_576_800
ALERT_SCHEMA = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "login-alerts.schema.json").read_text()))


def login(
    at: int, user: str = "u1", ip: str = "203.0.113.7", device_id: str | None = None, **fields
) -> ProcessingResult:
    event = {"user_id": user, "timestamp": at, "ip": ip, "locale": "en-US", **fields}
    if device_id:
        event["device_id"] = device_id
    return process_message(json.dumps(event).encode(), at + 1.0, KEY)


def pseudonym_ip(ip: str) -> str:
    return login(T0, ip=ip).record["ip_hash"]


def pseudonym(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def settings(**overrides) -> AlertSettings:
    """The ALERT_* settings' defaults, with `overrides`."""
    return replace(defaults().alerts, **overrides)


def rules(**overrides: RuleSettings) -> AlertRules:
    return AlertRules(settings(**overrides), pseudonym)


def fired(alert_rules: AlertRules, logins: list[ProcessingResult]) -> list[tuple[str, int]]:
    return [(alert.rule, alert.count) for alert in alert_rules.observe(counted(logins))]


# credential stuffing: 15 distinct users from one ip within 15 minutes


def stuffing(users: int, spread_s: int, ip: str = "203.0.113.7") -> list[ProcessingResult]:
    return [login(T0 + spread_s * n // max(users - 1, 1), user=f"victim{n}", ip=ip) for n in range(users)]


def test_credential_stuffing_stays_quiet_at_14_distinct_users():
    assert fired(rules(), stuffing(14, 60)) == []


def test_credential_stuffing_fires_at_15_distinct_users_from_one_ip():
    assert fired(rules(), stuffing(15, 60)) == [("credential_stuffing", 15)]


def test_credential_stuffing_counts_only_users_within_the_window():
    """15 users, the first exactly 900 s before the last: outside the 15 minutes, so 14 count."""
    assert fired(rules(), stuffing(15, 900)) == []
    assert fired(rules(), stuffing(15, 899)) == [("credential_stuffing", 15)]


def test_one_user_logging_in_many_times_from_one_ip_is_not_stuffing():
    assert fired(rules(), [login(T0 + n, user="same") for n in range(19)]) == []


def test_an_alert_fires_once_per_window_per_subject_and_names_only_the_hash():
    alert_rules = rules()
    alerts = alert_rules.observe(counted(stuffing(40, 60)))
    assert [a.rule for a in alerts] == ["credential_stuffing"]
    record = alerts[0].to_record("host-1", T0 + 61)
    ALERT_SCHEMA.validate(record)
    assert "203.0.113.7" not in json.dumps(record)
    assert record["subject_kind"] == "ip_hash" and record["evidence"] == {"distinct_users": 15}
    assert record["threshold"] == 15 and record["window_s"] == 900
    # Quiet for one window after it fired (at T0 + 21), then free to fire again.
    assert fired(alert_rules, [login(T0 + 900 + n, user=f"again{n}") for n in range(15)]) == []
    assert fired(alert_rules, [login(T0 + 922 + n, user=f"later{n}") for n in range(15)]) == [
        ("credential_stuffing", 15)
    ]


def test_a_login_without_an_ip_never_counts_towards_stuffing():
    events = [
        process_message(json.dumps({"user_id": f"u{n}", "timestamp": T0}).encode(), T0 + 1, KEY) for n in range(20)
    ]
    assert fired(rules(), events) == []


# locale hopping: 3 distinct locales of one user within 3 hours


def hops(locales: list[str], spread_s: int) -> list[ProcessingResult]:
    step = spread_s // max(len(locales) - 1, 1)
    return [login(T0 + step * n, user="traveller", ip=f"198.51.100.{n}", locale=loc) for n, loc in enumerate(locales)]


def test_locale_hopping_stays_quiet_at_two_locales():
    assert fired(rules(), hops(["en-US", "de-DE", "en-US", "de-DE"], 600)) == []


def test_locale_hopping_fires_at_three_locales_within_three_hours():
    assert fired(rules(), hops(["en-US", "de-DE", "pt-BR"], 3 * 3600 - 2)) == [("locale_hopping", 3)]


def test_locale_hopping_ignores_a_locale_older_than_three_hours():
    assert fired(rules(), hops(["en-US", "de-DE", "pt-BR"], 3 * 3600)) == []


def test_locale_hopping_names_the_user_by_hash_only():
    [alert] = rules().observe(counted(hops(["en-US", "de-DE", "pt-BR"], 60)))
    assert alert.subject_kind == "user_id_hash" and alert.subject_hash == pseudonym("traveller")


def test_an_unknown_locale_is_not_a_locale():
    events = hops(["en-US", "de-DE"], 60) + [login(T0 + 100, user="traveller")]
    events[-1] = process_message(json.dumps({"user_id": "traveller", "timestamp": T0 + 100}).encode(), T0 + 101, KEY)
    assert fired(rules(), events) == []


# shared device: 10 distinct users of one device within an hour


def sharing(users: int, spread_s: int) -> list[ProcessingResult]:
    step = spread_s // max(users - 1, 1)
    return [login(T0 + step * n, user=f"user{n}", ip=f"192.0.2.{n}", device_id="device-1") for n in range(users)]


def test_shared_device_stays_quiet_at_nine_users():
    assert fired(rules(), sharing(9, 60)) == []


def test_shared_device_fires_at_ten_users_of_one_device():
    assert fired(rules(), sharing(10, 60)) == [("shared_device", 10)]


def test_shared_device_counts_only_users_within_the_hour():
    assert fired(rules(), sharing(10, 3600)) == []
    assert fired(rules(), sharing(10, 3599 - 3599 % 9)) == [("shared_device", 10)]


# login burst: 20 logins of one user within a minute


def burst(count: int, spread_s: int) -> list[ProcessingResult]:
    return [login(T0 + spread_s * n // max(count - 1, 1), user="eager", ip=f"192.0.2.{n}") for n in range(count)]


def test_login_burst_stays_quiet_at_19_logins():
    assert fired(rules(), burst(19, 10)) == []


def test_login_burst_fires_at_20_logins_within_a_minute():
    assert fired(rules(), burst(20, 59)) == [("login_burst", 20)]


def test_login_burst_ignores_logins_a_minute_apart():
    assert fired(rules(), burst(20, 60)) == []


def test_thresholds_and_windows_come_from_the_settings():
    alert_rules = rules(login_burst=RuleSettings(3, 10))
    assert fired(alert_rules, burst(3, 9)) == [("login_burst", 3)]


# bounded memory


def kept(state: KeyedState) -> set[str]:
    return set(state.young) | set(state.old)


def test_state_is_capped_and_what_is_evicted_is_counted():
    state = KeyedState(capacity=4, ttl_s=60)
    for n in range(7):
        state.put(f"k{n}", (T0,))
    assert kept(state) == {"k4", "k5", "k6"}  # at most 4, the most recent among them
    assert state.evicted == 4


def test_expired_state_is_dropped_without_counting_it_evicted():
    state = KeyedState(capacity=4, ttl_s=60)
    for n in range(3):
        state.put(f"k{n}", (T0,))
    state.put("late", (T0 + 61,))  # the first generation had expired: dropped, not evicted
    assert state.evicted == 0
    state.expire(T0 + 200)
    state.expire(T0 + 300)
    assert len(state) == 0


def test_a_subject_seen_again_moves_to_the_young_generation_and_outlives_the_others():
    state = KeyedState(capacity=4, ttl_s=60)
    state.put("kept", (T0,))
    state.put("other", (T0,))
    state.put("k2", (T0,))  # a new generation: kept and other are old now
    state.put("kept", state.old.pop("kept"))  # seen again: young
    state.put("k3", (T0,))  # the next generation: other goes, kept stays
    assert kept(state) == {"k2", "kept", "k3"}
    assert state.evicted == 1


def test_a_subject_seen_again_keeps_its_evidence():
    alert_rules = AlertRules(settings(capacity=4), pseudonym)
    alert_rules.observe(counted([login(T0, user="u0", ip="192.0.2.1")]))
    alert_rules.observe(counted([login(T0 + 1, user=f"u{n}", ip=f"192.0.2.{n}") for n in (2, 3)]))
    alert_rules.observe(counted([login(T0 + 2, user="u9", ip="192.0.2.1")]))
    state, subject = alert_rules.stuffing.state, pseudonym_ip("192.0.2.1")
    assert (state.young.get(subject) or state.old[subject])[1] == {"u0": T0, "u9": T0 + 2}


def test_distinct_users_and_ips_beyond_capacity_keep_each_rule_at_its_capacity():
    """make bench measures the memory over a million; here, the rule that keeps it flat."""
    capacity = 1_000
    alert_rules = AlertRules(settings(capacity=capacity), pseudonym)
    batch = []
    for n in range(12_000):
        batch.append(
            login(T0 + n // 100, user=f"user{n}", ip=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", device_id=f"d{n}")
        )
        if len(batch) == 1_000:
            alert_rules.observe(counted(batch))
            alert_rules.expire()
            batch = []
    alert_rules.observe(counted(batch))
    assert all(len(state) <= capacity for state in alert_rules.states())
    assert alert_rules.evicted() > 0


def test_an_eviction_can_cost_an_alert_but_never_invents_one():
    alert_rules = AlertRules(settings(capacity=5), pseudonym)
    events = []
    for n in range(15):
        events.append(login(T0 + n, user=f"victim{n}", ip="203.0.113.7"))
        events += [login(T0 + n, user=f"noise{n}-{m}", ip=f"10.0.{n}.{m}") for m in range(6)]
    assert "credential_stuffing" not in [rule for rule, _ in fired(alert_rules, events)]
