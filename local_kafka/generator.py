"""A login-event generator standing in for the Docker setup's `mpradeep954/fetch-de-data-gen` image.

Events look like the upstream image's:

    {"user_id": "a6397988-...", "app_version": "2.3.0", "ip": "108.228.145.239", "locale": "RI",
     "device_id": "6221eb3d-...", "timestamp": 1720576825, "device_type": "iOS"}

and, at configurable rates, carry the faults a real feed shows: a missing device_type (as upstream
does), other missing fields, malformed values, non-JSON payloads, duplicates, late events, and a few
hot users and one hot IP logging in many users. The same seed gives the same stream.

    python -m local_kafka.generator --rate 50            # endless, 50 events/s
    python -m local_kafka.generator --count 1000000 --rate 0 --no-faults   # fill a topic, fast
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from kafka import KafkaProducer

from local_kafka import brokers

US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY"
).split()
APP_VERSIONS = ("2.3.0", "2.3.0", "2.3.0", "2.2.1", "2.4.0", "3.0.0")
DEVICE_TYPES = ("android", "iOS")
OPTIONAL_FIELDS = ("app_version", "device_type", "ip", "locale", "device_id")


@dataclass(frozen=True)
class FeedProfile:
    """How often each fault appears, as a share of all events (each event carries at most one)."""

    missing_device_type: float = 0.05
    missing_field: float = 0.01
    malformed_value: float = 0.01
    not_json: float = 0.005
    duplicate: float = 0.01
    late: float = 0.02
    hot_user: float = 0.05
    hot_ip: float = 0.03

    @classmethod
    def clean(cls) -> FeedProfile:
        """No faults and no hot keys: every event valid, every user, IP and device distinct."""
        return cls(**{f.name: 0.0 for f in fields(cls)})


@dataclass(frozen=True)
class GeneratedEvent:
    value: bytes
    kind: str  # "valid" or the name of the FeedProfile fault it carries


def generate(seed: int, profile: FeedProfile, clock: Callable[[], float] = time.time) -> Iterator[GeneratedEvent]:
    """An endless stream of events; deterministic for a given seed, profile and clock."""
    rng = random.Random(seed)
    hot_users = [_uuid(rng) for _ in range(5)]
    hot_ip = _ipv4(rng)
    faults = [(f.name, getattr(profile, f.name)) for f in fields(FeedProfile) if f.name not in ("hot_user", "hot_ip")]
    previous: bytes | None = None
    while True:
        event = {
            "user_id": rng.choice(hot_users) if rng.random() < profile.hot_user else _uuid(rng),
            "app_version": rng.choice(APP_VERSIONS),
            "ip": hot_ip if rng.random() < profile.hot_ip else _ipv4(rng),
            "locale": rng.choice(US_STATES),
            "device_id": _uuid(rng),
            "timestamp": int(clock()),
            "device_type": rng.choice(DEVICE_TYPES),
        }
        kind = _pick(rng, faults)
        if kind == "duplicate" and previous is not None:
            yield GeneratedEvent(previous, kind)
            continue
        if kind == "duplicate":
            kind = "valid"
        value = _apply(rng, kind, event)
        previous = value
        yield GeneratedEvent(value, kind)


def _pick(rng: random.Random, faults: list[tuple[str, float]]) -> str:
    draw = rng.random()
    for name, share in faults:
        if draw < share:
            return name
        draw -= share
    return "valid"


def _apply(rng: random.Random, kind: str, event: dict) -> bytes:
    if kind == "missing_device_type":
        del event["device_type"]
    elif kind == "missing_field":
        del event[rng.choice(("user_id", "timestamp", *OPTIONAL_FIELDS))]
    elif kind == "malformed_value":
        name, bad = rng.choice(
            (
                ("ip", "999.12.3.4"),
                ("ip", "not-an-ip"),
                ("timestamp", "yesterday"),
                ("timestamp", 86400),
                ("user_id", 12345),
                ("app_version", 2.3),
                ("locale", ["RI"]),
            )
        )
        event[name] = bad
    elif kind == "not_json":
        text = json.dumps(event)
        return rng.choice((text[: len(text) // 2].encode(), b"\xff\xfe\x00login", b"[1, 2, 3]", b""))
    elif kind == "late":
        event["timestamp"] -= rng.randint(60, 6 * 3600)
    return json.dumps(event, separators=(",", ":")).encode()


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def produce(
    bootstrap_servers: str,
    topic: str,
    events: Iterator[GeneratedEvent],
    count: int | None,
    rate: float,
    should_stop: Callable[[], bool] = lambda: False,
    security: dict[str, Any] | None = None,
) -> int:
    """Send events (rate 0: as fast as the producer goes); returns how many were acknowledged.

    `security`: kafka-python's settings for a secured cluster (see local_kafka.secure)."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers,
        **(security or {}),
        client_id="login-event-generator",
        # Large, lingering batches: a backlog of a million events fills in seconds, not minutes.
        linger_ms=20,
        batch_size=512 * 1024,
    )
    sent = 0
    started = time.monotonic()
    try:
        for event in events:
            if (count is not None and sent >= count) or should_stop():
                break
            producer.send(topic, event.value)
            sent += 1
            if rate > 0:
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)
    return sent


def _fill_slice(job: tuple[str, str, int, FeedProfile, int, dict[str, Any] | None]) -> int:
    bootstrap_servers, topic, seed, profile, count, security = job
    return produce(bootstrap_servers, topic, generate(seed, profile), count, rate=0, security=security)


def fill(
    bootstrap_servers: str,
    topic: str,
    seed: int,
    profile: FeedProfile,
    count: int,
    workers: int,
    security: dict[str, Any] | None = None,
) -> int:
    """Send count events as fast as possible from several processes; returns how many were acknowledged.

    kafka-python spends about 40 us of one core on each send, so one process tops out near 25,000
    events/s; a process per core fills a million-event backlog in well under a minute. Worker i
    uses seed + i, so the same seed still gives the same events (interleaved differently).
    """
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    jobs = [(bootstrap_servers, topic, seed + i, profile, share, security) for i, share in enumerate(shares)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return sum(pool.map(_fill_slice, jobs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local_kafka.generator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="input cluster (default 127.0.0.1:29092, with --secure 127.0.0.1:29094)",
    )
    parser.add_argument(
        "--secure", action="store_true", help="write to the secured input cluster (`up --secure`) as its admin user"
    )
    parser.add_argument("--topic", default="user-login", help="topic to fill (default %(default)s)")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="events per second; 0 for as fast as possible (default %(default)s)"
    )
    parser.add_argument("--count", type=int, default=None, help="events to send (default: endless)")
    parser.add_argument("--seed", type=int, default=None, help="random seed; the same seed gives the same stream")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="producer processes when --rate 0 and --count are given (default: one per core)",
    )
    parser.add_argument(
        "--no-faults", action="store_true", help="clean data: valid events, all users, IPs and devices distinct"
    )
    for f in fields(FeedProfile):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}-rate",
            type=float,
            default=None,
            dest=f.name,
            help=f"share of events with this fault (default {f.default})",
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    profile = FeedProfile.clean() if args.no_faults else FeedProfile()
    profile = replace(
        profile, **{f.name: getattr(args, f.name) for f in fields(FeedProfile) if getattr(args, f.name) is not None}
    )
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    security = None
    if args.secure:
        secure_input = brokers.secure_clusters()[0]
        security = {k: v for k, v in secure_input.client_settings().items() if k != "bootstrap_servers"}
    bootstrap = args.bootstrap_servers or (
        secure_input.bootstrap if args.secure else brokers.default_clusters()[0].bootstrap
    )

    began = time.monotonic()
    if args.rate == 0 and args.count is not None and args.workers > 1:
        sent = fill(bootstrap, args.topic, seed, profile, args.count, args.workers, security)
    else:
        stopping = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.append(True))
        sent = produce(
            bootstrap, args.topic, generate(seed, profile), args.count, args.rate, lambda: bool(stopping), security
        )
    elapsed = time.monotonic() - began
    print(
        f"sent {sent} events to {args.topic} in {elapsed:.1f} s "
        f"({sent / max(elapsed, 1e-9):,.0f} events/s, seed {seed})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
