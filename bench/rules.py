"""process_message of this checkout against another commit's, side by side: `python -m bench.rules`.

Both versions (this working tree, and --against, a git revision extracted with `git archive`) time
the same --events events of the generator's default mix, faults and hot keys included, with one key
and one processing time. Each round runs one child process per version, alternating which goes
first; a child reports the fastest of --passes passes over the events, as mean microseconds per
message. The ratio this / other is given per round and as the ratio of the medians, so a change can
be read against this machine's noise.

The default --against is the last commit whose process_message was the one issue 21 measured at
8.1 us (commit 6e1eb91); `make bench` reports this command's ratio against it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from itertools import islice
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
BEFORE = "6e1eb91"
KEY = b"bench-rules-key-0123456789abcdef"
SEED = 21
DEFAULT_EVENTS = 20_000


def extract(revision: str, into: Path) -> None:
    """The processor's rules and package as they were at `revision` (raises CalledProcessError if unknown)."""
    archive = subprocess.run(
        ["git", "archive", revision, "kafka_consumer_processor.py", "login_pipeline"],
        cwd=PROJECT_DIR,
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def write_events(path: Path, count: int, processed_at: float) -> None:
    sys.path.insert(0, str(PROJECT_DIR))
    from local_kafka.generator import FeedProfile, generate

    events = islice(generate(SEED, FeedProfile(), clock=lambda: processed_at - 5), count)
    path.write_text(json.dumps([base64.b64encode(event.value).decode() for event in events]))


def time_one(checkout: Path, events_file: Path, processed_at: float, passes: int) -> float:
    """Mean microseconds per message of `checkout`'s process_message, the fastest of `passes` passes."""
    arguments = [str(checkout), str(events_file), repr(processed_at), str(passes)]
    output = subprocess.run(
        [sys.executable, "-m", "bench.rules", "--child", *arguments],
        cwd=PROJECT_DIR,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ""},
    ).stdout
    return float(output)


def child(checkout: str, events_file: str, processed_at: str, passes: str) -> None:
    sys.path.insert(0, checkout)  # before any import of the processor: its package must be that checkout's
    from kafka_consumer_processor import process_message

    events = [base64.b64decode(event) for event in json.loads(Path(events_file).read_text())]
    now = float(processed_at)
    best = float("inf")
    for _ in range(int(passes)):
        started = time.perf_counter()
        for raw in events:
            process_message(raw, now, KEY)
        best = min(best, time.perf_counter() - started)
    print(best / len(events) * 1e6)


def compare(against: str, events: int, rounds: int, passes: int) -> tuple[float, float, list[float], list[float]]:
    """(this build's median us/message, the other's, this build's per-round figures, the other's)."""
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as scratch:
        other = Path(scratch) / "other"
        extract(against, other)
        events_file = Path(scratch) / "events.json"
        processed_at = 1_720_576_900.5
        write_events(events_file, events, processed_at)
        this_runs: list[float] = []
        other_runs: list[float] = []
        for checkout in (PROJECT_DIR, other):  # a first run of each fills the page cache: not counted
            time_one(checkout, events_file, processed_at, 1)
        for round_number in range(rounds):
            order = [(PROJECT_DIR, this_runs), (other, other_runs)]
            for checkout, runs in order[::-1] if round_number % 2 else order:
                runs.append(time_one(checkout, events_file, processed_at, passes))
                print(f"  round {round_number + 1}: {checkout.name}: {runs[-1]:.2f} us", file=sys.stderr)
    return statistics.median(this_runs), statistics.median(other_runs), this_runs, other_runs


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default=BEFORE, help="the git revision to compare with")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=5, help="passes per child; the fastest counts")
    args = parser.parse_args()
    this, other, this_runs, other_runs = compare(args.against, args.events, args.rounds, args.passes)
    per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(this_runs, other_runs))
    print(f"process_message, mean over {args.events:,} events of the generator's mix, {args.rounds} rounds:")
    print(f"- this checkout: {this:.2f} us/message ({min(this_runs):.2f}-{max(this_runs):.2f})")
    print(f"- {args.against}: {other:.2f} us/message ({min(other_runs):.2f}-{max(other_runs):.2f})")
    print(f"- this / {args.against}: {this / other:.2f} (per round: {per_round})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
