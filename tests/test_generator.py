"""The login-event generator: upstream's schema, faults at their configured rates, reproducible."""

import itertools
import json
import uuid
from collections import Counter
from dataclasses import fields

import pytest

from local_kafka.generator import US_STATES, FeedProfile, generate, main, produce
from tests.kafka_helpers import create_topics, read_all, unique_name

FIXED_CLOCK = lambda: 1720576825  # noqa: E731 - a stream is reproducible only with a fixed clock


DEFAULT_PROFILE = FeedProfile()


def take(n, seed=7, profile=DEFAULT_PROFILE):
    return list(itertools.islice(generate(seed, profile, FIXED_CLOCK), n))


def test_valid_events_have_the_upstream_schema():
    for event in take(2000, profile=FeedProfile.clean()):
        body = json.loads(event.value)
        assert set(body) == {"user_id", "app_version", "ip", "locale", "device_id", "timestamp", "device_type"}
        uuid.UUID(body["user_id"]), uuid.UUID(body["device_id"])
        assert body["locale"] in US_STATES
        assert body["device_type"] in ("android", "iOS")
        assert body["timestamp"] == 1720576825
        assert len(body["ip"].split(".")) == 4


def test_the_clean_profile_has_only_valid_events_with_distinct_users_ips_and_devices():
    bodies = [json.loads(event.value) for event in take(5000, profile=FeedProfile.clean())]
    assert {event.kind for event in take(5000, profile=FeedProfile.clean())} == {"valid"}
    assert len({body["user_id"] for body in bodies}) == 5000
    assert len({body["device_id"] for body in bodies}) == 5000
    assert len({body["ip"] for body in bodies}) > 4900  # random IPv4s, so a rare collision is fine


def test_fault_rates_match_the_profile_within_tolerance():
    n = 40_000
    counts = Counter(event.kind for event in take(n))
    profile = FeedProfile()
    for name in ("missing_device_type", "missing_field", "malformed_value", "not_json", "duplicate", "late"):
        expected = getattr(profile, name) * n
        assert abs(counts[name] - expected) < 4 * expected**0.5 + 5, (name, counts[name], expected)


def test_each_fault_is_what_it_says():
    events = take(20_000)
    for previous, event in zip(events, events[1:]):
        if event.kind == "duplicate":
            assert event.value == previous.value
        elif event.kind == "missing_device_type":
            assert "device_type" not in json.loads(event.value)
        elif event.kind == "missing_field":
            assert len(json.loads(event.value)) == 6
        elif event.kind == "late":
            assert json.loads(event.value)["timestamp"] < 1720576825 - 59
        elif event.kind == "not_json":
            try:
                assert not isinstance(json.loads(event.value), dict)
            except ValueError:
                pass


def test_hot_users_and_one_hot_ip_recur():
    bodies = [json.loads(e.value) for e in take(10_000) if e.kind == "valid"]
    top_users = Counter(b["user_id"] for b in bodies).most_common(5)
    top_ip, ip_count = Counter(b["ip"] for b in bodies).most_common(1)[0]
    assert all(count > 50 for _, count in top_users)
    assert ip_count > 200
    assert len({b["user_id"] for b in bodies if b["ip"] == top_ip}) > 100  # one IP, many users


def test_the_same_seed_gives_the_same_stream_and_another_seed_another():
    assert take(3000, seed=11) == take(3000, seed=11)
    assert take(100, seed=11) != take(100, seed=12)


def test_every_profile_rate_has_a_cli_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for f in fields(FeedProfile):
        assert f"--{f.name.replace('_', '-')}-rate" in help_text


def test_produce_sends_every_event_to_kafka(kafka):
    topic = unique_name("generated")
    create_topics(kafka.input, 3, topic)
    events = generate(3, FeedProfile(), FIXED_CLOCK)
    assert produce(kafka.input.bootstrap, topic, events, count=500, rate=0) == 500
    values = sorted(record.value for record in read_all(kafka.input, topic))
    assert values == sorted(event.value for event in take(500, seed=3))
