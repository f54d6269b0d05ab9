"""Real-time login-event processor: user-login (input cluster) → processed-logins / user-login-dlq (output cluster).

    python kafka_consumer_processor.py            # settings from the environment and .env
    python kafka_consumer_processor.py --help     # every setting, as a flag

The processing rules live here, in `process_message`: customize them in this file. The run loop
(poll → process → produce → commit) is `login_pipeline.run_loop`, wired by `login_pipeline.app`;
configuration is `login_pipeline.config`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sys
from datetime import datetime, timezone
from functools import lru_cache, partial
from typing import Annotated, Any

try:
    import msgspec
    import orjson

    from login_pipeline import app, logs
    from login_pipeline import config as configuration
except ModuleNotFoundError as missing:  # the set-up step was skipped: say what to do instead of a traceback
    sys.exit(
        f"missing Python package {missing.name!r}: install the requirements first, "
        "for instance: python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
    )
from login_pipeline.addresses import classify_ip
from login_pipeline.results import (
    INVALID_FIELD,
    MALFORMED_JSON,
    MISSING_REQUIRED_FIELD,
    ProcessedLogin,
    ProcessingResult,
    Rejection,
)

EARLIEST_TIMESTAMP = 946684800  # 2000-01-01T00:00:00Z
MAX_FUTURE_SECONDS = 24 * 3600
OPTIONAL_FIELDS = ("app_version", "device_type", "ip", "locale", "device_id")
# Longest accepted value of each string field, in characters. Real values are far shorter (a UUID is
# 36, an IPv6 literal at most 45, a BCP 47 locale rarely over 12); the limits keep one record from
# filling the output topic's size limit or the insights' memory.
MAX_CHARS = {"user_id": 256, "app_version": 64, "device_type": 64, "ip": 45, "locale": 35, "device_id": 256}
UNKNOWN = "unknown"

log = logging.getLogger("kafka_consumer_processor")


def process_message(raw: bytes, processed_at: float, pii_key: bytes) -> ProcessingResult:
    """Validate, repair, enrich and mask one login event. Pure: no I/O, no clock, no randomness.

    In: the message value as it arrived, the processing time (epoch seconds) and the HMAC key for
    personal data. Out: a ProcessedLogin (key user_id, JSON value matching
    schemas/processed-login.schema.json) or a Rejection (reason, field, message). It never raises
    for any input; the run loop still parks a message on the dead-letter topic if it does.

    Rules, in order (the first that fails decides the rejection):
    1. Not UTF-8, not JSON, or JSON that is not an object: malformed_json.
    2. user_id missing, null or "": missing_required_field; not a string: invalid_field.
    3. timestamp missing or null: missing_required_field. An int (not a bool) or a string of ASCII
       digits, as epoch seconds; anything else, a time before 2000-01-01, or more than 24 h after
       processed_at: invalid_field.
    4. app_version, device_type, ip, locale, device_id: missing, null or "" are repaired ("unknown",
       or null for the ip and device_id hashes) and listed in repaired_fields; not a string, or an
       ip that is not an IPv4 or IPv6 literal (a zone id included): invalid_field.
       Any string field longer than MAX_CHARS: invalid_field.
    5. device_type is lower-cased, locale upper-cased; fields not named above are dropped.
    ip and device_id leave only as HMAC-SHA-256 hashes, each under its own key derived from pii_key
    (field_key), the ip in its canonical form (login_pipeline.addresses), so every spelling of one
    address gives one hash; no message quotes a value.

    Rules 1, 2 and 4's types and lengths are checked by one of two decoders: LoginEvent's, in C, for
    the shape nearly every event has, or _decode_any_shape for the rest. Both give a LoginEvent; the
    rules after that are below, once.
    """
    try:
        event = _decode_common_shape(raw)
    except msgspec.DecodeError:
        decoded = _decode_any_shape(raw, processed_at)
        if isinstance(decoded, Rejection):
            return decoded
        event = decoded

    user_id = event.user_id
    if not user_id:
        return Rejection(MISSING_REQUIRED_FIELD, "user_id", "user_id is missing")
    login_ts: int | str | Rejection = event.timestamp
    if type(login_ts) is not int or not EARLIEST_TIMESTAMP <= login_ts <= processed_at + MAX_FUTURE_SECONDS:
        login_ts = _login_ts(login_ts, processed_at)  # the usual integer fails the test above only if wrong
        if isinstance(login_ts, Rejection):
            return login_ts

    app_version, device_type, ip, locale, device_id = (
        event.app_version,
        event.device_type,
        event.ip,
        event.locale,
        event.device_id,
    )
    repaired = []
    if not (app_version and device_type and ip and locale and device_id):  # one test for the usual event
        repaired = [name for name in OPTIONAL_FIELDS if not getattr(event, name)]
    ip_states, device_id_states = _field_states(pii_key)
    ip_hash = ip_version = ip_is_public = None
    if ip:
        address = classify_ip(ip)
        if address is None:
            return Rejection(INVALID_FIELD, "ip", "ip is not a valid IPv4 or IPv6 address (zone ids are refused)")
        ip_hash = _hmac_hex(*ip_states, address.canonical)
        ip_version, ip_is_public = address.version, address.is_public

    record = {
        "user_id": user_id,
        "app_version": app_version or UNKNOWN,
        "app_major_version": _major_version(app_version) if app_version else None,
        "device_type": device_type.lower() if device_type else UNKNOWN,
        "locale": locale.upper() if locale else UNKNOWN,
        "ip_hash": ip_hash,
        "ip_version": ip_version,
        "ip_is_public": ip_is_public,
        "device_id_hash": _hmac_hex(*device_id_states, device_id) if device_id else None,
        "login_ts": login_ts,
        "login_time": _iso_utc(login_ts),
        "processed_time": _iso_utc(processed_at),
        "event_delay_s": _delay_s(processed_at, login_ts),
        "repaired_fields": repaired,
    }
    return ProcessedLogin(user_id.encode(), orjson.dumps(record), record)


def _bounded(name: str) -> Any:
    return Annotated[str, msgspec.Meta(max_length=MAX_CHARS[name])]


# orjson reads an integer outside [-2**63, 2**64) as a float, which rule 3 refuses: this decoder
# leaves whatever is outside int64 to _decode_any_shape.
_JsonInteger = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class LoginEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A login event's fields, each of its JSON type and within MAX_CHARS; None where missing or null.

    As a decoder (_decode_common_shape), it takes only the shape nearly every event has: the seven
    fields, no others, user_id and timestamp present, each a string (timestamp an integer or a
    string). It refuses anything else, and _decode_any_shape takes it: so it must never accept what
    orjson would read differently (tests/test_process_message.py holds it to that). msgspec decodes
    and checks it in C: 0.3 us an event, against 0.4 us for orjson.loads alone (timeit).
    """

    user_id: _bounded("user_id")  # type: ignore[valid-type]
    timestamp: _JsonInteger | str
    app_version: _bounded("app_version") | None = None  # type: ignore[valid-type]
    device_type: _bounded("device_type") | None = None  # type: ignore[valid-type]
    ip: _bounded("ip") | None = None  # type: ignore[valid-type]
    locale: _bounded("locale") | None = None  # type: ignore[valid-type]
    device_id: _bounded("device_id") | None = None  # type: ignore[valid-type]


_decode_common_shape = msgspec.json.Decoder(LoginEvent).decode


def _decode_any_shape(raw: bytes, processed_at: float) -> LoginEvent | Rejection:
    """Rules 1 to 4's types and lengths, in order, for any JSON: the first broken one, or the event."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Rejection(MALFORMED_JSON, None, _why_malformed(raw))
    if not isinstance(event, dict):
        return Rejection(MALFORMED_JSON, None, f"JSON {type(event).__name__} is not an object")

    user_id = event.get("user_id")
    if user_id is None or user_id == "":
        return Rejection(MISSING_REQUIRED_FIELD, "user_id", "user_id is missing")
    if not isinstance(user_id, str):
        return Rejection(INVALID_FIELD, "user_id", f"user_id must be a string, not {_json_type(user_id)}")
    if len(user_id) > MAX_CHARS["user_id"]:
        return _too_long("user_id")

    timestamp = event.get("timestamp")
    if timestamp is None:
        return Rejection(MISSING_REQUIRED_FIELD, "timestamp", "timestamp is missing")
    checked = _login_ts(timestamp, processed_at)  # rule 3 whole comes before rule 4
    if isinstance(checked, Rejection):
        return checked

    for name in OPTIONAL_FIELDS:
        value = event.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            return Rejection(INVALID_FIELD, name, f"{name} must be a string, not {_json_type(value)}")
        if len(value) > MAX_CHARS[name]:
            return _too_long(name)
    return LoginEvent(user_id, timestamp, *(event.get(name) for name in OPTIONAL_FIELDS))


def _login_ts(timestamp: object, processed_at: float) -> int | Rejection:
    login_ts = _epoch_seconds(timestamp)
    if login_ts is None:
        return Rejection(
            INVALID_FIELD, "timestamp", "timestamp must be epoch seconds: an integer or a string of digits"
        )
    if login_ts < EARLIEST_TIMESTAMP:
        return Rejection(INVALID_FIELD, "timestamp", "timestamp is before 2000-01-01")
    if login_ts > processed_at + MAX_FUTURE_SECONDS:
        return Rejection(INVALID_FIELD, "timestamp", "timestamp is more than 24 h in the future")
    return login_ts


def _too_long(name: str) -> Rejection:
    return Rejection(INVALID_FIELD, name, f"{name} is longer than {MAX_CHARS[name]} characters")


def _why_malformed(raw: bytes) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "message is not UTF-8"
    return "message is not valid JSON"


def _epoch_seconds(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # Twelve digits reach the year 33658: longer strings are junk, and int() of thousands of digits is slow.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    return None


@lru_cache(maxsize=1024)  # bounded; a stream carries a handful of app versions
def _major_version(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isascii() and head.isdigit() and len(head) <= 6 else None


@lru_cache(maxsize=4096)  # bounded; a batch shares one processing time and logins cluster in time
def _delay_s(processed_at: float, login_ts: int) -> float:
    return round(processed_at - login_ts, 3)


@lru_cache(maxsize=8)  # a process has one key and hashes four fields with it
def field_key(pii_key: bytes, field: str) -> bytes:
    """The key one field is hashed under: HMAC-SHA-256(pii_key, "login-pipeline/<field>").

    One key per field, so equal values in different fields give unrelated hashes: with one key for
    all, an ip or a user id sent as a device_id came back as the HMAC an alert names its subject by.
    """
    return hmac.new(pii_key, f"login-pipeline/{field}".encode(), hashlib.sha256).digest()


def hash_user_id(pii_key: bytes, user_id: str) -> str:
    """How an alert names a user: HMAC-SHA-256 under the user_id field's key."""
    return _keyed_hash(field_key(pii_key, "user_id"), user_id)


@lru_cache(maxsize=2)
def _field_states(pii_key: bytes) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """The HMAC states of the ip's and the device_id's keys, looked up once a message."""
    return _hmac_states(field_key(pii_key, "ip")), _hmac_states(field_key(pii_key, "device_id"))


def _keyed_hash(key: bytes, value: str) -> str:
    # Keyed, not a plain SHA-256: all 2**32 IPv4 addresses can be hashed and matched in minutes.
    inner, outer = _hmac_states(key)
    return _hmac_hex(inner, outer, value)


def _hmac_hex(inner: Any, outer: Any, value: str) -> str:
    digest = inner.copy()
    digest.update(value.encode())
    mac = outer.copy()
    mac.update(digest.digest())
    return mac.hexdigest()


@lru_cache(maxsize=8)
def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA-256 (RFC 2104) with the key's inner and outer blocks hashed once, copied per value.

    The same digest as hmac.new(key, value, sha256) (tests/test_process_message.py checks it), in
    0.9 us a value against 1.6 us for copying an hmac.HMAC, whose copy and hexdigest are Python
    wrappers (timeit, 20,000 IPs). hmac.digest() is out: it releases the GIL, and under load the
    client's network threads made each call wait (profiled: 62 us a call).
    """
    block = hashlib.sha256().block_size
    padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
    return hashlib.sha256(padded.translate(_INNER_PAD)), hashlib.sha256(padded.translate(_OUTER_PAD))


_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))  # translate tables: XOR every key byte
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))


@lru_cache(maxsize=4096, typed=True)  # bounded; a batch shares one processing time and logins cluster in time
def _iso_utc(epoch_seconds: float) -> str:
    moment = datetime.fromtimestamp(epoch_seconds, timezone.utc)
    return moment.isoformat(timespec="seconds" if isinstance(epoch_seconds, int) else "milliseconds")[:-6] + "Z"


def _json_type(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = configuration.load(argv, __doc__)
    except configuration.ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    logs.configure(config.log_format)
    pii_key = config.pii_hash_key
    if pii_key is None:
        # A random key is never a known one: hashes stay unguessable, they just differ per process.
        pii_key = secrets.token_bytes(32)
        log.warning(
            "PII_HASH_KEY is unset: hashing ip and device_id with a random key for this process only; "
            "hashes will differ between runs and instances. Set PII_HASH_KEY in production."
        )
    return app.main(
        config,
        partial(process_message, pii_key=pii_key),
        partial(hash_user_id, pii_key),
        field_key(pii_key, "users-hll"),
    )


if __name__ == "__main__":
    sys.exit(main())
