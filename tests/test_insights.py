"""Insights and the bounded sketches under them: accurate enough, and fixed in size."""

import random
import sys
import uuid

from kafka_consumer_processor import process_message
from login_pipeline.insights import Insights
from login_pipeline.results import Rejection
from login_pipeline.sketches import HyperLogLog, LogHistogram, MinuteCounts, SpaceSaving


def test_hyperloglog_counts_distinct_items_within_a_few_percent():
    sketch = HyperLogLog()
    for n in range(200_000):
        sketch.add(f"user-{n % 50_000}")
    assert abs(sketch.count() - 50_000) < 0.05 * 50_000


def test_hyperloglog_is_exact_enough_for_small_sets_and_fixed_in_size():
    sketch = HyperLogLog()
    size = sys.getsizeof(sketch._registers)
    for n in range(10):
        sketch.add(str(n))
    assert sketch.count() == 10
    for n in range(100_000):
        sketch.add(str(uuid.UUID(int=n)))
    assert sys.getsizeof(sketch._registers) == size


def test_space_saving_keeps_the_heavy_hitters_in_bounded_counters():
    sketch = SpaceSaving(capacity=10)
    rng = random.Random(1)
    for _ in range(20_000):
        sketch.add(rng.choice(["ios", "android"]) if rng.random() < 0.6 else f"junk-{rng.random()}")
    assert {item for item, _ in sketch.top(2)} == {"ios", "android"}
    assert len(sketch._counts) == 10 and sketch.total == 20_000


def test_log_histogram_quantiles_are_within_a_bucket():
    histogram = LogHistogram()
    for n in range(1, 1001):
        histogram.add(n / 100)  # 0.01 .. 10 s
    assert 4.9 < histogram.quantile(0.5) < 5.3
    assert 9.4 < histogram.quantile(0.95) < 10.0
    assert LogHistogram().quantile(0.5) is None


def test_minute_counts_keep_only_the_minutes_up_to_the_newest():
    counts = MinuteCounts(minutes=3)
    for minute in (0, 1, 2, 3, 5, 9):
        counts.add(minute * 60)
        counts.add(minute * 60 + 30)
    counts.add(0)  # far older than the window: dropped, not stored
    counts.add(7 * 60)  # late, but inside the window
    assert counts.newest(3) == [(420, 1), (480, 0), (540, 2)]
    assert counts.newest(2) == [(480, 0), (540, 2)]
    assert counts.dropped == 1
    assert len(counts._counts) <= 3


def test_insights_render_counts_shares_and_rejections():
    clock = iter([0.0, 10.0]).__next__
    insights = Insights(clock=clock)
    key = b"k" * 16
    for n in range(90):
        raw = (f'{{"user_id": "u{n % 30}", "timestamp": 1720576825, "device_type": "{"iOS" if n % 3 else "android"}",'
               f' "locale": "ri", "app_version": "2.3.0", "ip": "1.2.3.4", "device_id": "d"}}').encode()
        insights.observe(process_message(raw, 1720576826.0, key))
    insights.observe(Rejection("malformed_json", None, "message is not valid JSON"))
    block = insights.render(lag=7)
    assert "processed 91   valid 90 (98.9%)   repaired 0   rejected 1: malformed_json 1" in block
    assert "9 msg/s now" in block and "consumer lag 7" in block
    assert "users         ~30 distinct" in block
    assert "device types  ios 66.7%  android 33.3%" in block
    assert "locales       RI 100.0%" in block
    assert "logins/min    01:56 0  01:57 0  01:58 0  01:59 0  02:00 90" in block
    assert "event delay   p50 1.0 s" in block
