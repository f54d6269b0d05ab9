"""Two builds of the processor side by side: `python -m bench.compare --against DIR`.

DIR is another checkout of this repository (for instance `git worktree add /tmp/before HEAD~5`); both
run with this checkout's virtualenv on one fresh pair of local brokers, draining one preloaded
topic of --events clean events, with each engine, live insights off and on. Rounds alternate which
contender goes first (and reverse every other round); the table gives each contender's median with
its slowest and fastest run, and the ratio this build / the other per round, so a difference can be
read against this machine's noise. Nothing here is a target: it answers "did this change cost
throughput?".
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.benchmark import ENGINES, Bench, Contender
from local_kafka import brokers
from local_kafka.brokers import PROJECT_DIR
from local_kafka.generator import FeedProfile


def contenders(builds: dict[str, Path]) -> list[Contender]:
    chosen = []
    for engine in ENGINES:
        for live in ("off", "on"):
            for build, checkout in builds.items():
                port = str(brokers.free_ports(1)[0]) if live == "on" else "0"
                command = [sys.executable, str(checkout / "kafka_consumer_processor.py"), "--env-file", "/dev/null"]
                settings = {"KAFKA_CLIENT": engine, "METRICS_PORT": port, "LIVE_INSIGHTS": live}
                chosen.append(Contender(f"{build} {engine} live insights {live}", command, settings))
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, required=True, help="the other checkout")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    builds = {"this": PROJECT_DIR, "other": args.against.resolve()}
    state = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    pair = brokers.Pair(*brokers.ephemeral_clusters(state))
    brokers.up(pair.clusters)
    try:
        bench = Bench(pair, state)
        topic = bench.preload(args.events, 1, FeedProfile.clean())
        everyone = contenders(builds)
        rates: dict[str, list[float]] = {contender.name: [] for contender in everyone}
        for round_number in range(args.rounds):
            shift = round_number % len(everyone)
            order = everyone[shift:] + everyone[:shift]
            for contender in order[::-1] if round_number % 2 else order:
                rate = args.events / bench.drain([contender], topic, args.events)
                rates[contender.name].append(rate)
                print(f"  round {round_number + 1}: {contender.name:40} {rate:10,.0f} msg/s", file=sys.stderr)
    finally:
        brokers.down(pair.clusters)
        shutil.rmtree(state, ignore_errors=True)
    print("| contender | median msg/s | slowest | fastest |\n|---|---|---|---|")
    for name, measured in rates.items():
        print(f"| {name} | {statistics.median(measured):,.0f} | {min(measured):,.0f} | {max(measured):,.0f} |")
    print()
    for engine in ENGINES:
        for live in ("off", "on"):
            this, other = rates[f"this {engine} live insights {live}"], rates[f"other {engine} live insights {live}"]
            per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(this, other))
            ratio = statistics.median(this) / statistics.median(other)
            print(f"- this / other, {engine}, live insights {live}: {ratio:.2f} (per round: {per_round})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
