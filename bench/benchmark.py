"""`make bench`: the processor against its client library's ceiling and the naive design, side by side.

Runs on a fresh pair of real local brokers (under .local/bench, removed before and after) and prints
one Markdown table. Every figure is a ratio or a distribution measured in this run, on this machine:

- throughput: N valid events preloaded into a 1-partition topic; each contender drains it into its
  own output topic with its own group; rate = records delivered / time from first to last output
  record (start-up excluded). Contenders alternate, the median of --runs is reported.
- latency: events fed at a steady 1,000/s into a LogAppendTime topic; end-to-end = output receipt
  time minus the input record's append time; p50 and p99.
- memory: 1,000,000 events whose users, IPs and devices are all distinct; RSS of the processor and
  its output process together at 20 % and 100 %, and the sum of their peaks.
- scaling: drain time of N events on a 3-partition topic with 1, 2 and 3 processor processes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import kafka
from kafka import KafkaConsumer, TopicPartition

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
from local_kafka import brokers  # noqa: E402
from local_kafka.brokers import create_topics  # noqa: E402
from local_kafka.generator import FeedProfile, fill  # noqa: E402
from local_kafka.memory import tree_rss_mb  # noqa: E402

PII_KEY = "benchmark-key-0123456789abcdef"
PROCESSOR = [sys.executable, str(PROJECT_DIR / "kafka_consumer_processor.py"), "--env-file", "/dev/null"]
BASELINE = [sys.executable, str(PROJECT_DIR / "bench" / "baselines.py")]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


class Bench:
    def __init__(self, pair: brokers.Pair, log_dir: Path) -> None:
        self.pair = pair
        self.log_dir = log_dir
        self.output_reader = KafkaConsumer(bootstrap_servers=pair.output.bootstrap)

    def env(self, input_topic: str, output_topic: str, dlq_topic: str, group: str) -> dict[str, str]:
        return {
            **os.environ,
            "INPUT_BOOTSTRAP_SERVERS": self.pair.input.bootstrap,
            "OUTPUT_BOOTSTRAP_SERVERS": self.pair.output.bootstrap,
            "INPUT_TOPIC": input_topic,
            "OUTPUT_TOPIC": output_topic,
            "DLQ_TOPIC": dlq_topic,
            "CONSUMER_GROUP": group,
            "PII_HASH_KEY": PII_KEY,
        }

    def fresh_outputs(self, partitions: int = 1) -> tuple[str, str, str]:
        output, dlq = unique("bench-out"), unique("bench-dlq")
        create_topics(self.pair.output.bootstrap, partitions, output, dlq)
        return output, dlq, unique("bench-group")

    def preload(self, count: int, partitions: int, profile: FeedProfile) -> str:
        topic = unique("bench-in")
        create_topics(self.pair.input.bootstrap, partitions, topic)
        fill(self.pair.input.bootstrap, topic, seed=1, profile=profile, count=count, workers=os.cpu_count() or 1)
        return topic

    def delivered(self, *topics: str) -> int:
        partitions = [TopicPartition(t, p) for t in topics for p in self.output_reader.partitions_for_topic(t) or ()]
        return sum(self.output_reader.end_offsets(partitions).values())

    def start(self, command: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        with (self.log_dir / f"{name}.err").open("ab") as errors:
            return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)

    def drain(
        self,
        commands: list[list[str]],
        input_topic: str,
        expect: int,
        partitions: int = 1,
        timeout: float = 600,
        on_sample=None,
    ) -> float:
        """Start the commands on fresh outputs; seconds from the first output record to `expect` of them."""
        output, dlq, group = self.fresh_outputs(partitions)
        env = self.env(input_topic, output, dlq, group)
        processes = [self.start(command, env, f"{command[-1]}-{n}") for n, command in enumerate(commands)]
        try:
            deadline = time.monotonic() + timeout
            first_at = first_count = None
            while True:
                count = self.delivered(output, dlq)
                now = time.monotonic()
                if on_sample:
                    on_sample(count, processes)
                if first_at is None and count:
                    first_at, first_count = now, count
                if count >= expect:
                    return (now - first_at) * expect / max(expect - first_count, 1)
                if now > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"{commands[0][-1]} stopped at {count} of {expect} records; see {self.log_dir}")
                time.sleep(0.05)
        finally:
            stop(processes)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def throughput(bench: Bench, events: int, runs: int, naive_events: int) -> dict[str, float]:
    topic = bench.preload(events, 1, FeedProfile.clean())
    contenders = {
        "processor": ([PROCESSOR], events),
        "passthrough": ([BASELINE + ["passthrough"]], events),
        "naive": ([BASELINE + ["naive"]], naive_events),
    }
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for run in range(runs):
        order = list(contenders)[run % 3 :] + list(contenders)[: run % 3]  # alternate who goes first
        for name in order:
            commands, expect = contenders[name]
            seconds = bench.drain(commands, topic, expect)
            rates[name].append(expect / seconds)
            print(f"  throughput run {run + 1}/{runs}: {name:12} {expect / seconds:10,.0f} msg/s", file=sys.stderr)
    return {name: statistics.median(values) for name, values in rates.items()}


def latency(bench: Bench, rate: int, seconds: int) -> tuple[float, float]:
    topic = unique("bench-latency")
    create_topics(bench.pair.input.bootstrap, 1, topic, configs={"message.timestamp.type": "LogAppendTime"})
    output, dlq, group = bench.fresh_outputs()
    received: dict[int, float] = {}
    reader = KafkaConsumer(bootstrap_servers=bench.pair.output.bootstrap, fetch_max_wait_ms=100)
    reader.assign([TopicPartition(output, 0)])
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for messages in reader.poll(timeout_ms=100).values():
                now = time.time()
                for message in messages:
                    received[int(dict(message.headers)["source.offset"])] = now

    processor = bench.start(PROCESSOR, bench.env(topic, output, dlq, group), "latency-processor")
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        generator = subprocess.run(
            [
                sys.executable,
                "-m",
                "local_kafka.generator",
                "--bootstrap-servers",
                bench.pair.input.bootstrap,
                "--topic",
                topic,
                "--rate",
                str(rate),
                "--count",
                str(rate * seconds),
                "--no-faults",
                "--workers",
                "1",
            ],
            cwd=PROJECT_DIR,
            capture_output=True,
            timeout=seconds * 4 + 60,
        )
        assert generator.returncode == 0, generator.stderr
        deadline = time.monotonic() + 60
        while len(received) < rate * seconds and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        done.set()
        thread.join(10)
        stop([processor])
        reader.close()
    appended = KafkaConsumer(bootstrap_servers=bench.pair.input.bootstrap)
    partition = TopicPartition(topic, 0)
    appended.assign([partition])
    appended.seek_to_beginning(partition)
    append_times: dict[int, float] = {}
    while len(append_times) < rate * seconds:
        for messages in appended.poll(timeout_ms=1000).values():
            append_times.update({m.offset: m.timestamp / 1000 for m in messages})
    appended.close()
    # The first two seconds include the processor joining its group: steady state only.
    delays = sorted(received[o] - append_times[o] for o in received if o >= 2 * rate)
    return delays[len(delays) // 2] * 1000, delays[int(len(delays) * 0.99)] * 1000


def memory(bench: Bench, events: int) -> tuple[float, float, float]:
    topic = bench.preload(events, 3, FeedProfile.clean())
    samples: dict[str, float] = {}

    def sample(count: int, processes: list[subprocess.Popen]) -> None:
        pid = processes[0].pid
        if count >= events * 0.2 and "at20" not in samples:
            samples["at20"] = tree_rss_mb(pid)
        if count >= events:
            samples["at100"] = tree_rss_mb(pid)
            samples["peak"] = tree_rss_mb(pid, "VmHWM")

    bench.drain([PROCESSOR], topic, events, partitions=3, on_sample=sample)
    return samples["at20"], samples["at100"], samples["peak"]


def scaling(bench: Bench, events: int) -> dict[int, float]:
    topic = bench.preload(events, 3, FeedProfile.clean())
    return {n: bench.drain([PROCESSOR] * n, topic, events, partitions=3) for n in (1, 2, 3)}


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory_gb:.0f} GB, Python {platform.python_version()}, "
        f"kafka-python {kafka.__version__}, Apache Kafka (local KRaft, 1 node per cluster)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events for throughput and scaling")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per contender (median reported)")
    parser.add_argument("--naive-events", type=int, default=5_000, help="the naive design drains only this many")
    parser.add_argument("--memory-events", type=int, default=1_000_000, help="distinct-user events for memory")
    parser.add_argument("--latency-seconds", type=int, default=20, help="duration of the 1,000 msg/s feed")
    args = parser.parse_args()

    state = brokers.STATE_DIR / "bench"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    pair = brokers.Pair(*brokers.ephemeral_clusters(state))
    print(f"starting brokers under {state}", file=sys.stderr)
    brokers.up(pair.clusters)
    try:
        bench = Bench(pair, state)
        rates = throughput(bench, args.events, args.runs, args.naive_events)
        print("  measuring latency", file=sys.stderr)
        p50, p99 = latency(bench, 1000, args.latency_seconds)
        print("  measuring memory", file=sys.stderr)
        at20, at100, peak = memory(bench, args.memory_events)
        print("  measuring scaling", file=sys.stderr)
        drains = scaling(bench, args.events)
    finally:
        brokers.down(pair.clusters)
        shutil.rmtree(state, ignore_errors=True)

    vs_passthrough = rates["processor"] / rates["passthrough"]
    vs_naive = rates["processor"] / rates["naive"]
    ok = lambda passed: "yes" if passed else "**no**"  # noqa: E731
    rows = [
        ("processor throughput", f"{rates['processor']:,.0f} msg/s", "", ""),
        ("raw passthrough (kafka-python ceiling)", f"{rates['passthrough']:,.0f} msg/s", "", ""),
        ("naive design", f"{rates['naive']:,.0f} msg/s", "", ""),
        ("processor / passthrough", f"{vs_passthrough:.2f}", ">= 0.8", ok(vs_passthrough >= 0.8)),
        ("processor / naive", f"{vs_naive:.1f}x", ">= 5x", ok(vs_naive >= 5)),
        ("end-to-end latency p50 at 1,000 msg/s", f"{p50:.1f} ms", "", ""),
        ("end-to-end latency p99 at 1,000 msg/s", f"{p99:.1f} ms", "<= 50 ms", ok(p99 <= 50)),
        (f"RSS at 20 % / 100 % of {args.memory_events:,} distinct", f"{at20:.0f} / {at100:.0f} MB", "", ""),
        ("RSS growth 20 % -> 100 %", f"{at100 - at20:+.1f} MB", "<= 30 MB", ok(at100 - at20 <= 30)),
        ("peak RSS", f"{peak:.0f} MB", "<= 250 MB", ok(peak <= 250)),
    ] + [
        (
            f"drain {args.events:,} on 3 partitions, {n} process{'es' if n > 1 else ''}",
            f"{seconds:.1f} s ({args.events / seconds:,.0f} msg/s)",
            "",
            "",
        )
        for n, seconds in drains.items()
    ]
    print(f"\nMeasured on {machine()}; {args.events:,} events, median of {args.runs} alternating runs.\n")
    print("| measure | result | target | met |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
