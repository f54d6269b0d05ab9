"""The run loop's specification, against in-memory fakes of the client interface (tests/fakes.py).

No Kafka and no Java: each test runs in milliseconds. The real-broker suites check the same
guarantees end to end, with each engine.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal

import pytest

from kafka_consumer_processor import process_message
from login_pipeline import stop as stop_module
from login_pipeline.app import Pipeline, assemble, live_settings
from login_pipeline.client import Partition
from login_pipeline.config import load
from login_pipeline.live import LiveInsights
from login_pipeline.run_loop import LoopSettings
from login_pipeline.stop import StopRequest
from tests.fakes import FakeInput, FakeOutput, FakePublisher

KEY = b"unit-test-key-0123456789"
NOW = 1720576900.0


class InstantStop(StopRequest):
    """A stop request whose backoff sleeps return at once."""

    def sleep(self, seconds: float) -> None:
        pass


def login(n: int) -> bytes:
    return json.dumps({"user_id": f"u{n}", "timestamp": 1720576825, "ip": "8.8.8.8", "device_type": "ios"}).encode()


def records(partition: int, count: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(None, login(partition * 1000 + n)) for n in range(count)]


def process(raw: bytes, processed_at: float):
    return process_message(raw, processed_at, KEY)


def pipeline(
    source: FakeInput,
    output: FakeOutput,
    stop: StopRequest | None = None,
    publisher: FakePublisher | None = None,
    process=process,
    revoke_settle_s: float = 2.5,
    **settings: str,
) -> Pipeline:
    config = load([], "test", environ={"INSIGHTS_EVERY": "1000", **settings})
    stop = stop or InstantStop()
    source.stop_when_drained = stop
    live = None
    if publisher is not None:
        live = LiveInsights(
            live_settings(config), publisher, lambda user: hashlib.sha256(user.encode()).hexdigest(), lambda: NOW
        )
    return assemble(
        config,
        process,
        source,
        output,
        stop,
        out=io.StringIO(),
        clock=lambda: NOW,
        live=live,
        revoke_settle_s=revoke_settle_s,
    )


def sources(output: FakeOutput, topic: str = "output") -> list[tuple[int, int]]:
    return [record.source for record in output.delivered if record.topic == topic]


def assert_commits_follow_acknowledgements(source: FakeInput) -> None:
    for commit in source.commits:
        for partition, offset in commit.offsets.items():
            assert offset <= commit.acknowledged_then.get(partition.partition, 0), commit


def test_every_record_is_delivered_once_in_offset_order_and_everything_is_committed():
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 10), 1: records(1, 7)})
    assert pipeline(source, output).run() == 0
    delivered = sources(output)
    assert sorted(delivered) == [(0, n) for n in range(10)] + [(1, n) for n in range(7)]
    for partition in (0, 1):
        assert [offset for p, offset in delivered if p == partition] == sorted(
            offset for p, offset in delivered if p == partition
        )
    assert source.committed == {Partition("user-login", 0): 10, Partition("user-login", 1): 7}
    assert source.closed and output.closed


def test_nothing_is_committed_before_its_batch_and_every_batch_before_it_are_acknowledged():
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 30)}, batch_size=2)
    assert pipeline(source, output).run() == 0
    assert len(source.commits) > 3
    assert_commits_follow_acknowledgements(source)


def test_a_failed_delivery_is_retried_from_its_first_offset_and_nothing_past_it_is_committed():
    output = FakeOutput(fail_batches={1})
    source = FakeInput(output, {0: records(0, 12)}, batch_size=3)
    assert pipeline(source, output).run() == 0
    delivered = sources(output)
    assert sorted(set(delivered)) == [(0, n) for n in range(12)]  # nothing lost
    assert delivered[:3] == [(0, 0), (0, 1), (0, 2)]
    first_retry = delivered.index((0, 3))
    assert delivered[first_retry : first_retry + 3] == [(0, 3), (0, 4), (0, 5)]  # resent in order after the failure
    assert_commits_follow_acknowledgements(source)
    assert source.committed == {Partition("user-login", 0): 12}


def test_a_batch_never_acknowledged_is_never_committed_not_even_at_stop():
    output = FakeOutput(fail_batches=set(range(1, 1000)))  # the first batch gets through, then none
    source = FakeInput(output, {0: records(0, 12)}, batch_size=3)
    stop = InstantStop()
    tested = pipeline(source, output, stop)
    stop_after_polls(source, stop, 12)
    assert tested.run() == 1  # stopped with an undelivered batch
    assert_commits_follow_acknowledgements(source)
    assert source.committed == {Partition("user-login", 0): 3}


def test_a_batch_refused_for_good_stops_the_run_with_exit_1_and_nothing_committed_past_it():
    output = FakeOutput(refuse_batches={1})
    source = FakeInput(output, {0: records(0, 12)}, batch_size=3)
    assert pipeline(source, output).run() == 1  # no retry: a missing ACL does not heal by itself
    assert sources(output) == [(0, 0), (0, 1), (0, 2)]
    assert source.committed == {Partition("user-login", 0): 3}
    assert (
        source.polls <= 1 + LoopSettings._field_defaults["in_flight_batches"] + 1
    )  # it stopped at the refusal, not after the stream
    assert source.closed and output.closed


def stop_after_polls(source: FakeInput, stop: StopRequest, polls: int) -> None:
    original = source.poll

    def poll(timeout_s: float):
        if source.polls + 1 >= polls:
            stop.request()
        return original(timeout_s)

    source.stop_when_drained = None
    source.poll = poll


def test_batches_in_flight_behind_a_failed_one_are_abandoned_and_resent_after_it():
    output = FakeOutput(fail_batches={0})
    source = FakeInput(output, {0: records(0, 9)}, batch_size=3)
    assert pipeline(source, output).run() == 0
    delivered = sources(output)
    # The two batches behind the failed one were produced anyway (the output acknowledged them,
    # unread); everything from the failed batch on is then produced again, in order.
    assert delivered == [(0, n) for n in range(3, 9)] + [(0, n) for n in range(9)]
    assert_commits_follow_acknowledgements(source)


def test_a_failed_background_commit_is_repeated_by_the_next_commit():
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 12), 1: records(1, 12)}, batch_size=4)
    source.fail_commits = 1
    assert pipeline(source, output).run() == 0
    assert source.committed == {Partition("user-login", 0): 12, Partition("user-login", 1): 12}
    assert_commits_follow_acknowledgements(source)


def test_a_failed_commit_is_retried_while_no_new_input_arrives():
    # Found on real brokers: the input cluster went away as the stream ended; the commit it failed was
    # only retried "with the next batch", and with no next batch the group stayed behind for good.
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 8)}, batch_size=8)
    stop = InstantStop()
    tested = pipeline(source, output, stop)
    stop_after_polls(source, stop, 6)
    source.fail_commits = 1
    assert tested.run() == 0
    background = [commit.offsets for commit in source.commits if not commit.waited]
    assert background == [{Partition("user-login", 0): 8}]  # the retry, before any final commit
    assert_commits_follow_acknowledgements(source)


def test_a_failed_final_commit_exits_1():
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 5)}, batch_size=10)
    stop = InstantStop()
    tested = pipeline(source, output, stop)
    stop_after_polls(source, stop, 3)
    source.fail_commits = 100  # every commit fails from now on
    assert tested.run() == 1
    assert not [commit for commit in source.commits if not commit.waited]  # the background ones all failed
    assert_commits_follow_acknowledgements(source)


def test_a_revoke_between_batches_commits_what_was_acknowledged_and_loses_nothing():
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 20)}, batch_size=3)
    source.revoke_at = {3, 5}
    assert pipeline(source, output).run() == 0
    revoke_commits = [commit for commit in source.commits if commit.waited][:2]
    assert revoke_commits and all(commit.offsets for commit in revoke_commits)
    assert sorted(set(sources(output))) == [(0, n) for n in range(20)]
    assert_commits_follow_acknowledgements(source)
    assert source.committed == {Partition("user-login", 0): 20}


def test_a_revoke_with_an_unresponsive_output_waits_only_its_bound_and_commits_nothing_unacknowledged():
    waited = []
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 12)}, batch_size=3)
    tested = pipeline(source, output, revoke_settle_s=0.05)
    original = output.acknowledgement

    def slow_during_revoke(timeout_s=None):
        if timeout_s is not None:  # only the revoke handler passes a bound
            waited.append(timeout_s)
            return None
        return original(timeout_s)

    output.acknowledgement = slow_during_revoke
    source.revoke_at = {3}
    assert tested.run() == 0
    assert waited and max(waited) <= 0.05
    assert_commits_follow_acknowledgements(source)
    assert sorted(set(sources(output))) == [(0, n) for n in range(12)]  # abandoned batches were resent
    assert source.committed == {Partition("user-login", 0): 12}


def test_the_output_dying_stops_with_exit_1_and_commits_nothing_past_the_last_acknowledgement():
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 30)}, batch_size=3)
    tested = pipeline(source, output)
    original_end = output.end_batch
    ended = []

    def die_after_four():
        ended.append(1)
        if len(ended) == 4:
            output.dead = True
        original_end()

    output.end_batch = die_after_four
    assert tested.run() == 1
    assert_commits_follow_acknowledgements(source)
    assert max(source.committed.values()) <= 9


def test_an_unavailable_input_is_polled_again_and_a_refusing_one_stops_with_exit_1():
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 6)}, batch_size=3)
    source.unavailable_at = {1, 2}
    assert pipeline(source, output).run() == 0
    assert sorted(sources(output)) == [(0, n) for n in range(6)]

    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 6)}, batch_size=3)
    source.refuse_at = {2}
    assert pipeline(source, output).run() == 1
    assert_commits_follow_acknowledgements(source)


def test_null_values_and_a_raising_rule_become_dead_letters_with_their_original_bytes(monkeypatch):
    output = FakeOutput()
    source = FakeInput(output, {0: [(None, None), (b"k", None), (None, b"boom"), (None, login(1))]}, batch_size=10)

    def rule(raw: bytes, processed_at: float):
        if raw == b"boom":
            raise KeyError("secret 10.1.2.3")
        return process(raw, processed_at)

    assert pipeline(source, output, process=rule).run() == 0
    dead = [
        (r.source, r.key, r.value, r.reason, r.headers.get("dlq.null_value"))
        for r in output.delivered
        if r.topic == "dlq"
    ]
    # A null value goes as an empty one, flagged: Kafka refuses a record with neither key nor value.
    assert dead == [
        ((0, 0), None, b"", "malformed_json", b"true"),
        ((0, 1), b"k", b"", "malformed_json", b"true"),
        ((0, 2), None, b"boom", "processing_error", None),
    ]
    assert sources(output) == [(0, 3)]


def test_a_record_refused_by_the_output_cluster_is_counted_as_a_dead_letter_in_the_insights():
    output = FakeOutput(reroute_offsets={(0, 1)})
    source = FakeInput(output, {0: records(0, 3)}, batch_size=10)
    tested = pipeline(source, output)
    assert tested.run() == 0
    assert tested.running.insights.valid == 2 and tested.running.insights.rejected == {"record_too_large": 1}


def test_a_processed_login_too_large_for_the_output_topic_goes_to_the_dlq_with_its_input_bytes():
    output = FakeOutput(size_limits={"processed-logins": 300, "user-login-dlq": 1_048_576})
    source = FakeInput(output, {0: records(0, 2)}, batch_size=10)
    assert pipeline(source, output).run() == 0
    assert [(r.topic, r.value, r.reason) for r in output.delivered] == [
        ("dlq", login(0), "record_too_large"),
        ("dlq", login(1), "record_too_large"),
    ]


def test_a_second_signal_exits_at_once_without_committing(monkeypatch):
    exits = []
    monkeypatch.setattr(stop_module.os, "_exit", exits.append)
    stop = StopRequest()
    stop._handle(signal.SIGTERM, None)
    assert stop.requested and exits == []
    stop._handle(signal.SIGINT, None)
    assert exits == [128 + signal.SIGINT]


@pytest.mark.parametrize("planted", ["commit before acknowledgement"])
def test_the_specification_catches_a_commit_made_before_acknowledgement(monkeypatch, planted):
    """The commit-after-ack check above is not vacuous: a run loop that commits on hand-over fails it."""
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 9)}, batch_size=3)
    tested = pipeline(source, output)
    original = tested.loop.in_flight.handed_over

    def commit_on_hand_over(batch):
        original(batch)
        source.commit_in_background(batch.next_offsets)

    monkeypatch.setattr(tested.loop.in_flight, "handed_over", commit_on_hand_over)
    assert tested.run() == 0
    with pytest.raises(AssertionError):
        assert_commits_follow_acknowledgements(source)


def test_metrics_count_consumed_acknowledged_and_dead_lettered_records_and_rebalances():
    output = FakeOutput(fail_batches={1}, restarts_before={1: 1, 2: 2})
    source = FakeInput(output, {0: records(0, 8) + [(None, b"not json")], 1: records(1, 4)}, batch_size=4)
    source.revoke_at = {3}
    tested = pipeline(source, output)
    assert tested.run() == 0
    sample = tested.metrics.registry.get_sample_value
    assert sample("login_processor_messages_consumed_total") >= 13  # a failed batch is polled again
    assert sample("login_processor_records_acknowledged_total", {"topic": "output"}) == 12
    assert sample("login_processor_records_acknowledged_total", {"topic": "dlq"}) == 1
    assert sample("login_processor_messages_processed_total", {"outcome": "valid"}) == 12
    assert sample("login_processor_dead_letters_total", {"reason": "malformed_json"}) == 1
    assert sample("login_processor_delivery_failures_total") == 1
    assert sample("login_processor_producer_restarts_total") == 3
    assert sample("login_processor_rebalances_total") >= 2  # the scheduled revoke, and the close
    assert sample("login_processor_batches_in_flight") == 0
    assert sample("login_processor_last_commit_timestamp_seconds") == NOW  # the test's clock
    assert sample("login_processor_event_delay_seconds_count") == 12
    assert sample("login_processor_consumer_lag_records", {"partition": "0"}) == 0


# Live insights: what the run loop owes the windows and alerts


def test_a_stop_publishes_the_open_windows_and_they_count_every_message_once():
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 10), 1: records(1, 10) + [(None, b"junk")]}, batch_size=4)
    publisher = FakePublisher(source)
    assert pipeline(source, output, publisher=publisher).run() == 0
    windows = publisher.values("login-insights")
    assert {window["closed_by"] for window in windows} == {"stop"}
    assert sum(window["messages"] for window in windows) == 21
    assert sum(window["logins"] for window in windows) == 20
    assert sorted({p for window in windows for p in window["partitions"]}) == [0, 1]
    assert publisher.flushes >= 1 and publisher.closed


def test_a_revoke_publishes_the_open_windows_before_it_commits():
    output = FakeOutput()
    source = FakeInput(output, {0: records(0, 20)}, batch_size=3)
    source.revoke_at = {4}
    publisher = FakePublisher(source)
    assert pipeline(source, output, publisher=publisher).run() == 0
    revoke_commit = next(n for n, commit in enumerate(source.commits) if commit.waited)
    partials = [
        (value, commits)
        for topic, _, value, commits in publisher.published
        if topic == "login-insights" and value["closed_by"] == "revoke"
    ]
    assert partials and all(commits <= revoke_commit for _, commits in partials)
    assert sum(value["logins"] for value in publisher.values("login-insights")) == 20  # none counted twice


def test_a_retried_batch_counts_once_in_the_windows():
    output = FakeOutput()
    output.fail_batches = {1}
    source = FakeInput(output, {0: records(0, 9)}, batch_size=3)
    publisher = FakePublisher(source)
    assert pipeline(source, output, publisher=publisher).run() == 0
    assert sum(window["logins"] for window in publisher.values("login-insights")) == 9


def test_an_alert_is_published_as_soon_as_its_batch_is_delivered():
    burst = [
        (None, json.dumps({"user_id": f"victim{n}", "timestamp": 1720576825, "ip": "203.0.113.9"}).encode())
        for n in range(15)
    ]
    output = FakeOutput()
    source = FakeInput(output, {0: burst}, batch_size=5)
    publisher = FakePublisher(source)
    assert pipeline(source, output, publisher=publisher).run() == 0
    [alert] = publisher.values("login-alerts")
    assert alert["rule"] == "credential_stuffing" and alert["evidence"] == {"distinct_users": 15}
    assert "203.0.113.9" not in json.dumps(publisher.published, default=str)


def test_lag_is_unknown_until_every_assigned_partition_has_a_position_and_a_high_watermark():
    from login_pipeline.offsets import lags

    a, b = Partition("user-login", 0), Partition("user-login", 1)
    assert lags({a: 10, b: 5}, {a: 4, b: 5}) == {a: 6, b: 0}
    assert lags({a: 10, b: None}, {a: 4, b: 5}) is None
    assert lags({a: 10, b: 5}, {a: 4}) is None
    assert lags({a: 3}, {a: 4}) == {a: 0}  # a position past the cached watermark is not negative lag
