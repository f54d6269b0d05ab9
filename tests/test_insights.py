"""Insights and the bounded sketches under them: accurate enough, and fixed in size."""

import json
import os
import random
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_consumer_processor import process_message
from login_pipeline.insights import Insights, printable
from login_pipeline.results import Rejection
from login_pipeline.sketches import CappedCounts, HyperLogLog, LogHistogram, MinuteCounts


def test_hyperloglog_counts_distinct_items_within_a_few_percent():
    sketch = HyperLogLog()
    sketch.add_all(f"user-{n % 50_000}" for n in range(200_000))
    assert abs(sketch.count() - 50_000) < 0.05 * 50_000


def test_hyperloglog_is_exact_enough_for_small_sets_and_fixed_in_size():
    sketch = HyperLogLog()
    size = sys.getsizeof(sketch._registers)
    sketch.add_all(str(n) for n in range(10))
    assert sketch.count() == 10
    sketch.add_all(str(uuid.UUID(int=n)) for n in range(100_000))
    assert sys.getsizeof(sketch._registers) == size


def test_hyperloglog_gives_the_same_estimate_in_every_process_whatever_the_hash_seed():
    script = (
        "from login_pipeline.sketches import HyperLogLog; h = HyperLogLog()\n"
        "h.add_all(f'user-{n}' for n in range(30_000))\n"
        "print(h.count(), h._registers.hex()[:64])"
    )
    answers = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for seed in (0, 4, 99)
    }
    assert len(answers) == 1
    assert abs(int(answers.pop().split()[0]) - 30_000) < 3 * HyperLogLog.STANDARD_ERROR * 30_000


def test_capped_counts_are_exact_up_to_capacity_and_count_the_rest_as_other():
    counts = CappedCounts(capacity=10)
    counts.add_all(f"value-{n % 40}" for n in range(1000))  # 40 values, 25 each: more than the capacity
    assert counts.total == 1000 and counts.other == 30 * 25
    assert counts.top(3) == [("value-0", 25), ("value-1", 25), ("value-2", 25)]  # value-10 came too late
    assert len(counts.counts) == 10


def test_log_histogram_quantiles_are_within_a_bucket():
    histogram = LogHistogram()
    histogram.add_all([n / 100 for n in range(1, 1001)])  # 0.01 .. 10 s
    assert 4.9 < histogram.quantile(0.5) < 5.3
    assert 9.4 < histogram.quantile(0.95) < 10.0
    assert LogHistogram().quantile(0.5) is None


NOW = 10_000.0


@given(st.lists(st.sampled_from("abcdefgh"), max_size=60), st.lists(st.floats(0, 1e6), max_size=60))
def test_adding_a_batch_counts_as_adding_its_items_one_by_one(values, numbers):
    # Batches are cut wherever a delivered batch or a window ends: the counts must not depend on where.
    counts, users, delays = CappedCounts(capacity=5), HyperLogLog(), LogHistogram()
    for value in values:
        counts.add_all([value])
        users.add_all([value])
    for number in numbers:
        delays.add_all([number])
    batch_counts, batch_users, batch_delays = CappedCounts(capacity=5), HyperLogLog(), LogHistogram()
    batch_counts.add_all(values)
    batch_users.add_all(values)
    batch_delays.add_all(numbers)
    assert (batch_counts.counts, batch_counts.other, batch_counts.total) == (counts.counts, counts.other, counts.total)
    assert batch_users.registers == users.registers
    assert (batch_delays.counts(), batch_delays.total) == (delays.counts(), delays.total)
    assert batch_delays.sum == pytest.approx(delays.sum)


def test_minute_counts_keep_only_the_minutes_up_to_the_newest():
    counts = MinuteCounts(minutes=3)
    for minute in (0, 1, 2, 3, 5, 9):
        counts.add(minute * 60, NOW)
        counts.add(minute * 60 + 30, NOW)
    counts.add(0, NOW)  # far older than the window: dropped, not stored
    counts.add(7 * 60, NOW)  # late, but inside the window
    assert counts.newest(3) == [(420, 1), (480, 0), (540, 2)]
    assert counts.newest(2) == [(480, 0), (540, 2)]
    assert counts.dropped == 1
    assert len(counts._counts) <= 3


def test_an_event_stamped_after_its_processing_time_does_not_move_the_window():
    counts = MinuteCounts(minutes=10)
    counts.add(600, processing_time=630.0)
    counts.add(600 + 23 * 3600, processing_time=631.0)  # a clock 23 h ahead
    counts.add(610, processing_time=632.0)
    assert counts.newest(1) == [(600, 2)]
    assert (counts.future, counts.dropped) == (1, 0)


def test_insights_render_counts_shares_and_rejections():
    clock = iter([0.0, 10.0]).__next__
    insights = Insights(clock=clock)
    key = b"k" * 16
    raws = [
        (
            f'{{"user_id": "u{n % 30}", "timestamp": 1720576825, "device_type": "{"iOS" if n % 3 else "android"}",'
            f' "locale": "ri", "app_version": "2.3.0", "ip": "1.2.3.4", "device_id": "d"}}'
        ).encode()
        for n in range(90)
    ]
    insights.observe([process_message(raw, 1720576826.0, key) for raw in raws[:50]])
    insights.observe([Rejection("malformed_json", None, "message is not valid JSON")])  # a batch of rejections only
    insights.observe([process_message(raw, 1720576826.0, key) for raw in raws[50:]])
    block = insights.render(lag=7)
    assert "processed 91   valid 90 (98.9%)   repaired 0   rejected 1: malformed_json 1" in block
    assert "9 msg/s now" in block and "consumer lag 7" in block
    assert "users         ~30 distinct (estimate, standard error 1.6%)" in block
    assert "device types  ios 66.7%  android 33.3%" in block
    assert "locales       RI 100.0%" in block
    assert "logins/min    01:56 0  01:57 0  01:58 0  01:59 0  02:00 90\n" in block
    assert "event delay   p50 1.0 s   p95 1.0 s (within 5%)" in block


def login(device_type: str = "ios", locale: str = "RI", timestamp: int = 1720576825) -> bytes:
    return (
        f'{{"user_id": "u1", "timestamp": {timestamp}, "device_type": {json.dumps(device_type)},'
        f' "locale": {json.dumps(locale)}, "app_version": "2.3.0"}}'
    ).encode()


def test_shares_of_a_uniform_51_value_domain_are_printed_exactly():
    insights = Insights()
    locales = [f"L{n:02d}" for n in range(51)]
    insights.observe([process_message(login(locale=locales[n % 51]), 1720576826.0, b"k" * 16) for n in range(51 * 37)])
    line = next(line for line in insights.render(lag=0).splitlines() if line.startswith("locales"))
    shares = [float(part.rstrip("%")) for part in line.split()[2::2]]
    assert len(shares) == 5 and all(abs(share - 100 / 51) < 0.5 for share in shares)
    assert "other" not in line


def test_a_domain_larger_than_the_counters_shows_exact_counts_and_an_other_share():
    insights = Insights()
    for batch in range(3):  # 1,000 device types, 3 logins each: far beyond the 256 counters
        insights.observe(
            [
                process_message(login(device_type=f"d{n % 1000:03d}"), 1720576826.0, b"k" * 16)
                for n in range(batch * 1000, batch * 1000 + 1000)
            ]
        )
    line = next(line for line in insights.render(lag=0).splitlines() if line.startswith("device types"))
    assert line == "device types  d000 0.1%  d001 0.1%  d002 0.1%  d003 0.1%  d004 0.1%  other 74.4%"


def test_values_from_the_input_are_escaped_and_cut_before_they_reach_the_terminal():
    insights = Insights()
    hostiles = ("\x1b]0;owned\x07", "ios\nprocessed 999999", "\u202eevil", "x" * 64)
    insights.observe([process_message(login(device_type=hostile), 1720576826.0, b"k" * 16) for hostile in hostiles])
    block = insights.render(lag=0)
    assert "\x1b" not in block and "\x07" not in block and "\u202e" not in block
    assert len(block.splitlines()) == 9  # no forged line
    line = next(line for line in block.splitlines() if line.startswith("device types"))
    assert "\\x1b]0;owned\\x07" in line and "ios\\nprocessed 99999" in line and "\\u202eevil" in line
    assert "x" * 23 + "…" in line and "x" * 24 not in line


def test_printable_leaves_ordinary_text_alone():
    assert printable("android") == "android" and printable("pt-BR") == "pt-BR" and printable("日本語") == "日本語"


def test_a_login_stamped_in_the_future_is_counted_apart_and_shown_as_such():
    insights = Insights()
    insights.observe(
        [
            process_message(login(timestamp=1720576825 + 23 * 3600), 1720576826.0, b"k" * 16),
            process_message(login(), 1720576826.0, b"k" * 16),
        ]
    )
    line = next(line for line in insights.render(lag=0).splitlines() if line.startswith("logins/min"))
    assert line.endswith("02:00 1   (not counted: 1 stamped in the future)")


@pytest.mark.slow  # 20 pytest processes: about 25 s
def test_this_suite_passes_under_20_hash_seeds():
    """Nothing here may depend on Python's per-process str hash: run the other tests under 20 seeds."""

    def run(seed: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not hash_seed"],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            timeout=300,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(SEEDS, pool.map(run, SEEDS)))
    failed = {seed: result.stdout[-500:] for seed, result in results.items() if result.returncode != 0}
    assert failed == {}


SEEDS = [0, 1, 4, 7, 42, 99, 123, 1000, 4242, 65535, 2**31, 2**32 - 1, *range(11, 19)]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0, 1, 52, HyperLogLog.MAX_RANK]))
def test_a_merge_of_registers_is_their_register_wise_maximum(seed, top):
    rng = random.Random(seed)
    size = 1 << HyperLogLog.PRECISION
    a = bytes(rng.choice((0, top, rng.randint(0, HyperLogLog.MAX_RANK))) for _ in range(size))
    b = bytes(rng.choice((0, top, rng.randint(0, HyperLogLog.MAX_RANK))) for _ in range(size))
    merged = HyperLogLog(a)
    merged.merge(HyperLogLog(b))
    assert merged.registers == bytes(map(max, a, b))
