"""Break things on purpose and show that nothing is lost: crashes, signals, outages, rebalances, poison.

Each scenario runs the real processor against the session's real brokers, is bounded in time, and
prints its figures (run `pytest -m slow -s` to see them). `make test-fast` skips these.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from local_kafka import brokers
from local_kafka.brokers import create_topics
from local_kafka.generator import FeedProfile, generate
from local_kafka.generator import produce as produce_events
from local_kafka.memory import tree_peak_rss_mb
from login_pipeline.run_loop import LoopSettings
from tests.kafka_helpers import (
    Processor,
    Topics,
    caught_up,
    committed_offsets,
    delivery,
    on_both_pairs,
    produce,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.slow
BATCH = 500  # small batches make a kill land mid-stream and bound the duplicates it may cause
# What a kill can repeat: the batches in flight, the one being processed, the last unanswered commit.
REPEATABLE = (LoopSettings._field_defaults["in_flight_batches"] + 2) * BATCH


def feed(kafka, topics: Topics, count: int, rate: float, seed: int = 1) -> threading.Thread:
    """Produce `count` generator events at `rate` per second in the background."""
    thread = threading.Thread(
        target=produce_events,
        args=(kafka.input.bootstrap, topics.input, generate(seed, FeedProfile()), count, rate),
        kwargs={"security": kafka.input.security_settings()},
        daemon=True,
    )
    thread.start()
    return thread


def report(scenario: str, **figures) -> None:
    print(f"\n[{scenario}] " + ", ".join(f"{name}={value}" for name, value in figures.items()))


@on_both_pairs
def test_crash_sigkill_at_random_moments_loses_nothing(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    producer = feed(kafka, topics, count=8_000, rate=500, seed=11)  # live events between kills
    processor = Processor(kafka, topics, tmp_path, engine=engine, BATCH_SIZE=str(BATCH))
    rng = random.Random(5)
    kills, events = 0, 8_000
    while producer.is_alive() or kills < 5:
        # A fresh backlog before each start keeps the processor busy mid-batch when the kill lands,
        # however fast it caught up the last time.
        produce_events(
            kafka.input.bootstrap,
            topics.input,
            generate(20 + kills, FeedProfile()),
            5_000,
            rate=0,
            security=kafka.input.security_settings(),
        )
        events += 5_000
        before = sum(o or 0 for o in committed_offsets(kafka.input, topics.input, topics.group).values())
        with processor:
            # Kill at a random moment once it is working: after its first commit in this run.
            wait_until(
                lambda before=before: (
                    sum(o or 0 for o in committed_offsets(kafka.input, topics.input, topics.group).values()) > before
                ),
                timeout=60,
                interval=0.05,
                message="progress after a restart",
            )
            time.sleep(rng.uniform(0, 0.4))
            processor.send_signal(signal.SIGKILL)
            processor.wait(30)
            kills += 1
    producer.join(60)
    with processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=120, message="caught up after the kills")
        assert processor.stop() == 0

    landed = delivery(kafka, topics)
    report("crash", events=len(landed.inputs), kills=kills, lost=len(landed.lost), duplicates=landed.duplicates)
    assert len(landed.inputs) == events
    assert landed.lost == []
    assert landed.duplicates <= kills * REPEATABLE  # at most the uncommitted batches at each kill
    assert landed.dlq_bytes_match()


@on_both_pairs
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_stream_commits_exactly_what_was_delivered(kafka, engine, tmp_path, signum):
    topics = Topics.create(kafka)
    producer = feed(kafka, topics, count=6_000, rate=1_500, seed=12)
    processor = Processor(kafka, topics, tmp_path, engine=engine, BATCH_SIZE=str(BATCH))
    with processor:
        time.sleep(2.5)
        assert processor.stop(signum) == 0
    committed = committed_offsets(kafka.input, topics.input, topics.group)
    landed = delivery(kafka, topics)
    downstream = {partition: 0 for partition in committed}
    for partition, offset in landed.landed:
        downstream[partition] = max(downstream[partition], offset + 1)
    assert {p: committed[p] or 0 for p in committed} == downstream
    assert landed.duplicates == 0

    producer.join(60)
    with processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=90, message="caught up after the restart")
        assert processor.stop() == 0
    landed = delivery(kafka, topics)
    report(
        f"graceful {signal.Signals(signum).name}",
        events=len(landed.inputs),
        lost=len(landed.lost),
        duplicates=landed.duplicates,
    )
    assert landed.lost == [] and landed.duplicates == 0


@pytest.mark.parametrize("side", ["output", "input"])
def test_a_cluster_outage_of_15_seconds_mid_stream_loses_nothing(kafka, engine, tmp_path, side):
    cluster = getattr(kafka, side)
    topics = Topics.create(kafka)
    producer = None if side == "input" else feed(kafka, topics, count=8_000, rate=400, seed=13)
    if side == "input":  # the producer cannot write to a stopped input cluster: preload instead
        produce(kafka.input, topics.input, [e.value for e, _ in zip(generate(13, FeedProfile()), range(8_000))])
    processor = Processor(kafka, topics, tmp_path, engine=engine, BATCH_SIZE="200")
    with processor:
        time.sleep(3)
        brokers.stop(cluster)
        down_at = time.monotonic()
        try:
            time.sleep(15)
            assert processor.process.poll() is None, "the processor died during the outage"
        finally:
            brokers.up((cluster,))
        back_at = time.monotonic()
        if producer:
            producer.join(120)
        wait_until(lambda: caught_up(kafka, topics), timeout=180, message=f"caught up after the {side} outage")
        recovered_in = time.monotonic() - back_at
        assert processor.stop() == 0
    landed = delivery(kafka, topics)
    report(
        f"{side} outage",
        events=len(landed.inputs),
        outage_s=round(back_at - down_at, 1),
        caught_up_after_s=round(recovered_in, 1),
        lost=len(landed.lost),
        duplicates=landed.duplicates,
    )
    assert len(landed.inputs) == 8_000
    assert landed.lost == []
    assert landed.dlq_bytes_match()


def test_scale_out_and_a_killed_member_lose_nothing(kafka, engine, tmp_path):
    topics = Topics.create(kafka, partitions=3)
    producer = feed(kafka, topics, count=12_000, rate=600, seed=14)
    members = [
        Processor(kafka, topics, tmp_path / f"member-{n}", engine=engine, BATCH_SIZE=str(BATCH)) for n in range(4)
    ]
    for member in members:
        member.workdir.mkdir()
    for member in members[:3]:
        member.start()
    try:
        time.sleep(6)
        members[0].send_signal(signal.SIGKILL)
        members[0].wait(30)
        members[3].start()
        producer.join(120)
        wait_until(lambda: caught_up(kafka, topics), timeout=180, message="the group caught up")
        assert [member.stop() for member in members[1:]] == [0, 0, 0]
    finally:
        for member in members:
            member.__exit__()
    landed = delivery(kafka, topics)
    report(
        "scale-out", events=len(landed.inputs), members=4, killed=1, lost=len(landed.lost), duplicates=landed.duplicates
    )
    assert len(landed.inputs) == 12_000
    assert landed.lost == []
    assert landed.duplicates <= REPEATABLE  # only the killed member's uncommitted batches


poison = st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=10,
    ).map(lambda value: json.dumps(value).encode()),
    st.sampled_from([b"", b"\x00" * 100, b"{" * 5000, b'{"user_id": "u", "timestamp": "9' + b"9" * 5000 + b'"}']),
)


@settings(
    max_examples=2,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.data_too_large, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(st.none() | st.binary(max_size=20), poison), min_size=300, max_size=300))
def test_poison_input_never_crashes_or_stalls_and_lands_in_the_dlq_byte_for_byte(
    kafka, engine, tmp_path_factory, messages
):
    topics = Topics.create(kafka)
    valid = [event.value for event, _ in zip(generate(15, FeedProfile.clean()), range(300))]
    producer = KafkaProducer(bootstrap_servers=kafka.input.bootstrap)
    try:
        for (key, value), good in zip(messages, valid):
            producer.send(topics.input, value=value, key=key)
            producer.send(topics.input, value=good)
        producer.flush(60)
    finally:
        producer.close(10)
    with Processor(kafka, topics, tmp_path_factory.mktemp("poison"), engine=engine) as processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=90, message="processor got through the poison")
        assert processor.process.poll() is None
        assert processor.stop() == 0
    landed = delivery(kafka, topics)
    assert landed.lost == [] and landed.duplicates == 0
    assert landed.dlq_bytes_match()
    assert all(r.key == landed.input_of(r).key for r in landed.dead_letters)
    assert len(landed.outputs) >= 300  # every valid event, plus any poison that happened to be a valid login


def test_a_200k_backlog_drains_with_bounded_memory(kafka, engine, tmp_path):
    topics = Topics.create(kafka)
    began = time.monotonic()
    produce_events(kafka.input.bootstrap, topics.input, generate(16, FeedProfile()), 200_000, rate=0)
    with Processor(kafka, topics, tmp_path, engine=engine) as processor:
        started = time.monotonic()
        wait_until(lambda: caught_up(kafka, topics), timeout=300, interval=1.0, message="backlog drained")
        drained_in = time.monotonic() - started
        peak_rss_mb = tree_peak_rss_mb(processor.process.pid)
        assert processor.stop() == 0
    landed_count = sum(1 for _ in delivery(kafka, topics).landed)
    report(
        "backlog",
        events=200_000,
        fill_s=round(started - began, 1),
        drain_s=round(drained_in, 1),
        rate_per_s=round(200_000 / drained_in),
        peak_rss_mb=round(peak_rss_mb),
    )
    assert landed_count == 200_000
    # Three processes with live insights on, the alert rules' state at its cap: 220-240 MB in make bench.
    assert peak_rss_mb < 400


def test_a_dead_output_process_stops_the_processor_with_exit_1_and_loses_nothing(kafka, tmp_path):
    topics = Topics.create(kafka)
    producer = feed(kafka, topics, count=4_000, rate=1_000, seed=17)
    # kafka-python's output child, the only child: the live insights' process would be a second one.
    processor = Processor(kafka, topics, tmp_path, BATCH_SIZE=str(BATCH), LIVE_INSIGHTS="off")
    with processor:
        wait_until(
            lambda: any(committed_offsets(kafka.input, topics.input, topics.group).values()),
            timeout=60,
            message="a first commit",
        )
        output_process = subprocess.run(
            ["pgrep", "-P", str(processor.process.pid), "-f", "multiprocessing.spawn"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        assert len(output_process) == 1
        os.kill(int(output_process[0]), signal.SIGKILL)
        assert processor.wait(60) == 1
    assert "the output process" in processor.stderr
    assert "nothing was committed past the last acknowledged batch" in processor.stderr
    producer.join(60)
    with processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=90, message="caught up after the restart")
        assert processor.stop() == 0
    landed = delivery(kafka, topics)
    report("output process killed", events=len(landed.inputs), lost=len(landed.lost), duplicates=landed.duplicates)
    assert landed.lost == [] and landed.duplicates <= REPEATABLE


def test_an_output_topic_that_refuses_large_records_gets_the_rest_and_the_dlq_the_refused(kafka, engine, tmp_path):
    # An output topic that takes at most 1,000 bytes a batch: ordinary logins fit one by one (the
    # producer splits its batches when refused), logins with long fields never do.
    topics = dataclasses.replace(Topics.create(kafka), output=unique_name("small-output"))
    create_topics(kafka.output, 3, topics.output, configs={"max.message.bytes": "1000"})
    long_fields = {"user_id": "u" * 250, "app_version": "9." * 32, "device_type": "t" * 64, "device_id": "d" * 256}
    values = []
    for n, event in enumerate(event for event, _ in zip(generate(18, FeedProfile.clean()), range(2_000))):
        values.append(event.value)
        if n % 40 == 0:
            values.append(
                json.dumps({**json.loads(event.value), **long_fields, "user_id": f"{n:03d}" + "u" * 250}).encode()
            )
    produce(kafka.input, topics.input, values)
    with Processor(kafka, topics, tmp_path, engine=engine) as processor:
        wait_until(lambda: caught_up(kafka, topics), timeout=180, message="caught up past the refused records")
        assert processor.process.poll() is None
        assert processor.stop() == 0
    landed = delivery(kafka, topics)
    refused = [record for record in landed.dead_letters if record.headers["dlq.reason"] == b"record_too_large"]
    report(
        "output refuses large records",
        events=len(landed.inputs),
        output=len(landed.outputs),
        refused=len(refused),
        lost=len(landed.lost),
        duplicates=landed.duplicates,
    )
    assert len(landed.inputs) == 2_050
    assert landed.lost == [] and landed.duplicates == 0
    assert len(landed.outputs) == 2_000 and len(refused) == 50
    assert all(json.loads(landed.input_of(record).value)["device_id"] == "d" * 256 for record in refused)
    assert all("dlq.refused_reason" not in record.headers for record in refused)  # they were valid logins
    assert landed.dlq_bytes_match()
    assert "record_too_large 50" in processor.stdout
