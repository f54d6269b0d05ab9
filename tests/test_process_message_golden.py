"""process_message held to a golden corpus: inputs and the exact results recorded from the rules as they
stood, so a faster implementation must give the same outputs, rejections, repairs and hashes.

The corpus (tests/golden/process_message.jsonl) holds the generator's mix with its faults at high
rates, and hostile inputs of every kind the rule tests know: bytes that are not UTF-8, JSON that is
not an object, wrong types in every field, values at and past every length limit, every spelling of
an address, timestamps at every bound, case mapping beyond ASCII. Change the rules on purpose, and
record it again: `python -m tests.test_process_message_golden` (then read the diff).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from kafka_consumer_processor import MAX_CHARS, process_message
from local_kafka.generator import FeedProfile, generate
from login_pipeline.results import ProcessedLogin

CORPUS = Path(__file__).parent / "golden" / "process_message.jsonl"
KEY = b"golden-corpus-key-0123456789"
PROCESSED_AT = 1720576900.5
GENERATED = 1000
FAULTY = FeedProfile(
    missing_device_type=0.1,
    missing_field=0.1,
    malformed_value=0.1,
    not_json=0.05,
    duplicate=0.02,
    late=0.05,
    hot_user=0.05,
    hot_ip=0.05,
)


def login(**fields: object) -> bytes:
    event = {
        "user_id": "u-1",
        "app_version": "2.3.0",
        "device_type": "android",
        "ip": "203.0.113.9",
        "locale": "RU",
        "device_id": "d-1",
        "timestamp": 1720576825,
    }
    event.update(fields)
    return json.dumps({name: value for name, value in event.items() if value is not _DROP}).encode()


_DROP = object()


def hostile() -> Iterator[bytes]:
    yield from (b"", b"\xff\xfe", b"\xef\xbb\xbf" + login(), b"[]", b"1", b'"x"', b"null", b"true", b"{", b"{}")
    yield from (b"[" * 10_000 + b"]" * 10_000, b'{"user_id": NaN}', b'{"a": Infinity}', b"9" * 5000)
    yield b'{"user_id": "a", "user_id": "b", "timestamp": 1720576825}'
    yield login(user_id=_DROP)
    yield login(timestamp=_DROP)
    for value in (
        None,
        "",
        7,
        2.5,
        True,
        ["x"],
        {"x": 1},
        "u" * MAX_CHARS["user_id"],
        "u" * (MAX_CHARS["user_id"] + 1),
    ):
        yield login(user_id=value)
    for value in (None, "", True, 1.5, -1, 0, 946684799, 946684800, "1720576825", "0x10", "１２", "9" * 13, 10**30):
        yield login(timestamp=value)
    yield login(timestamp=int(PROCESSED_AT) + 24 * 3600)
    yield login(timestamp=int(PROCESSED_AT) + 24 * 3600 + 1)
    for name in ("app_version", "device_type", "ip", "locale", "device_id"):
        for value in (_DROP, None, "", 7, False, ["x"], {"x": 1}, "x" * MAX_CHARS[name], "x" * (MAX_CHARS[name] + 1)):
            yield login(**{name: value})
    for ip in (
        "8.8.8.8", "10.0.0.1", "127.0.0.1", "0.0.0.0", "255.255.255.255", "1.2.3", "01.2.3.4", "1.2.3.4 ",
        "::1", "::", "2001:db8::1", "2001:0DB8:0000:0000:0000:0000:0000:0001", "::ffff:8.8.8.8",
        "fe80::1%eth0", "[::1]", "2001:db8::1/64", "١٢٣.1.1.1", "8.8.8.8\n",
    ):  # fmt: skip
        yield login(ip=ip)
    for device_type in ("ANDROID", "İOS", "Ǆ", "ß"):
        yield login(device_type=device_type)
    for locale in ("ru", "ß", "ﬁ", "tr-TR", "ı"):
        yield login(locale=locale)
    for version in ("10", "v2", "beta", "2.", "1234567.0", "٣.1"):
        yield login(app_version=version)
    yield login(extra="dropped", nested={"a": [1, 2]})
    yield login(app_version=None, device_type=None, ip=None, locale=None, device_id=None)


def corpus_inputs() -> list[bytes]:
    generated = generate(7, FAULTY, clock=lambda: PROCESSED_AT - 60)
    return [event.value for event in islice(generated, GENERATED)] + list(hostile())


def result_of(raw: bytes) -> dict:
    result = process_message(raw, PROCESSED_AT, KEY)
    if isinstance(result, ProcessedLogin):
        return {"key": result.key.decode(), "value": result.value.decode()}
    return {"reason": result.reason, "field": result.field, "message": result.message}


def test_process_message_gives_exactly_the_recorded_result_for_every_input_of_the_corpus():
    lines = CORPUS.read_text().splitlines()
    assert len(lines) > GENERATED  # the corpus is there, with its hostile part
    differ = []
    for line in lines:
        case = json.loads(line)
        raw = base64.b64decode(case["raw"])
        if result_of(raw) != case["result"]:
            differ.append((raw[:80], case["result"], result_of(raw)))
    assert not differ, f"{len(differ)} of {len(lines)} results changed; the first: {differ[0]}"


def test_the_corpus_covers_logins_repairs_and_every_rejection_reason():
    results = [json.loads(line)["result"] for line in CORPUS.read_text().splitlines()]
    reasons = {result.get("reason") for result in results}
    assert {"malformed_json", "missing_required_field", "invalid_field"} <= reasons
    logins = [json.loads(result["value"]) for result in results if "value" in result]
    assert len(logins) > GENERATED // 2
    assert any(login["repaired_fields"] for login in logins) and any(login["ip_version"] == 6 for login in logins)


def record() -> None:
    CORPUS.write_text(
        "".join(
            json.dumps({"raw": base64.b64encode(raw).decode(), "result": result_of(raw)}, ensure_ascii=False) + "\n"
            for raw in corpus_inputs()
        )
    )
    print(f"recorded {CORPUS}", file=sys.stderr)


if __name__ == "__main__":
    record()
