"""The specification of process_message: one table row per rule, then properties over any input."""

import hashlib
import hmac
import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_consumer_processor import MAX_CHARS, _keyed_hash, process_message
from login_pipeline.results import ProcessedLogin, Rejection

KEY = b"test-key-of-at-least-16-bytes"
NOW = 1720576900.5  # processing time: 75.5 s after the sample event
SAMPLE = {
    "user_id": "a6397988-1649-4859-ae5f-a1407b638ca6",
    "app_version": "2.3.0",
    "ip": "108.228.145.239",
    "locale": "RI",
    "device_id": "6221eb3d-89b5-4585-8c98-545b78e24c53",
    "timestamp": 1720576825,
    "device_type": "iOS",
}
MISSING = object()


def event(**changes) -> bytes:
    body = {**SAMPLE, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not MISSING}).encode()


def run(raw: bytes):
    return process_message(raw, NOW, KEY)


def hmac_hex(value: str, field: str = "ip") -> str:
    """HMAC-SHA-256 of `value` under `field`'s own key, HMAC-SHA-256(KEY, "login-pipeline/<field>")."""
    key = hmac.new(KEY, f"login-pipeline/{field}".encode(), hashlib.sha256).digest()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


# -- 1. The message must be a UTF-8 JSON object --------------------------------------------------
@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\xff\xfe\x00login", "message is not UTF-8"),
        (b"", "message is not valid JSON"),
        (b'{"user_id": "a"', "message is not valid JSON"),
        (b"[" * 100_000, "message is not valid JSON"),  # nesting deep enough to exhaust the parser
        (b"[1, 2, 3]", "JSON list is not an object"),
        (b'"just a string"', "JSON str is not an object"),
        (b"null", "JSON NoneType is not an object"),
        (b'{"user_id": "u", "timestamp": NaN}', "message is not valid JSON"),  # NaN and Infinity are not JSON
    ],
)
def test_anything_but_a_utf8_json_object_is_malformed_json(raw, message):
    assert run(raw) == Rejection("malformed_json", None, message)


# -- 2. user_id is required and a string ----------------------------------------------------------
@pytest.mark.parametrize(
    "user_id, reason",
    [
        (MISSING, "missing_required_field"),
        (None, "missing_required_field"),
        ("", "missing_required_field"),
        (12345, "invalid_field"),
        (True, "invalid_field"),
        (["a"], "invalid_field"),
        ({"id": 1}, "invalid_field"),
    ],
)
def test_user_id_must_be_present_and_a_string(user_id, reason):
    rejection = run(event(user_id=user_id))
    assert (rejection.reason, rejection.field) == (reason, "user_id")


# -- 3. timestamp is required: epoch seconds between 2000-01-01 and 24 h after processing ---------
@pytest.mark.parametrize(
    "timestamp, reason",
    [
        (MISSING, "missing_required_field"),
        (None, "missing_required_field"),
        ("", "invalid_field"),
        ("yesterday", "invalid_field"),
        ("1720576825.5", "invalid_field"),
        ("-1720576825", "invalid_field"),
        ("١٧٢٠٥٧٦٨٢٥", "invalid_field"),
        ("9" * 5000, "invalid_field"),
        (1720576825.0, "invalid_field"),
        (True, "invalid_field"),
        ([1720576825], "invalid_field"),
        (946684799, "invalid_field"),
        (86400, "invalid_field"),
        (-5, "invalid_field"),
        (int(NOW) + 24 * 3600 + 1, "invalid_field"),
    ],
)
def test_timestamp_must_be_epoch_seconds_in_range(timestamp, reason):
    rejection = run(event(timestamp=timestamp))
    assert (rejection.reason, rejection.field) == (reason, "timestamp")


@pytest.mark.parametrize(
    "timestamp, login_ts",
    [
        (1720576825, 1720576825),
        ("1720576825", 1720576825),
        (946684800, 946684800),
        (int(NOW) + 24 * 3600, int(NOW) + 24 * 3600),
    ],
)
def test_timestamp_accepts_ints_and_digit_strings_normalized_to_int(timestamp, login_ts):
    assert run(event(timestamp=timestamp)).record["login_ts"] == login_ts


# -- 4. Optional fields: repaired when empty, rejected when of the wrong type ---------------------
@pytest.mark.parametrize(
    "name, output_name, repaired_value",
    [
        ("app_version", "app_version", "unknown"),
        ("device_type", "device_type", "unknown"),
        ("locale", "locale", "unknown"),
        ("ip", "ip_hash", None),
        ("device_id", "device_id_hash", None),
    ],
)
@pytest.mark.parametrize("empty", [MISSING, None, ""])
def test_missing_null_or_empty_optional_fields_are_repaired_and_named(name, output_name, repaired_value, empty):
    result = run(event(**{name: empty}))
    assert isinstance(result, ProcessedLogin)
    assert result.record[output_name] == repaired_value
    assert result.record["repaired_fields"] == [name]


def test_several_repairs_are_listed_in_field_order():
    result = run(event(device_type=MISSING, ip=None, app_version=""))
    assert result.record["repaired_fields"] == ["app_version", "device_type", "ip"]


@pytest.mark.parametrize("name", ["app_version", "device_type", "ip", "locale", "device_id"])
@pytest.mark.parametrize("wrong", [2.3, 7, False, ["x"], {"x": 1}])
def test_optional_fields_of_the_wrong_type_are_invalid(name, wrong):
    rejection = run(event(**{name: wrong}))
    assert (rejection.reason, rejection.field) == ("invalid_field", name)


@pytest.mark.parametrize(
    "ip",
    ["999.12.3.4", "not-an-ip", "1.2.3", "1.2.3.4.5", "::g", " 1.2.3.4", "fe80::1%eth0", "fe80::1%\x1b]0;owned\x07"],
)
def test_an_ip_that_is_not_an_ipv4_or_ipv6_literal_is_invalid(ip):
    assert run(event(ip=ip)) == Rejection(
        "invalid_field", "ip", "ip is not a valid IPv4 or IPv6 address (zone ids are refused)"
    )


@pytest.mark.parametrize(
    "ip, canonical, version, public",
    [
        ("108.228.145.239", "108.228.145.239", 4, True),
        ("10.0.0.7", "10.0.0.7", 4, False),
        ("::ffff:108.228.145.239", "108.228.145.239", 4, True),
        ("2001:DB8::1", "2001:db8::1", 6, False),
        ("2001:4860:4860:0:0::8888", "2001:4860:4860::8888", 6, True),
    ],
)
def test_the_ip_is_hashed_in_its_canonical_form_and_enriched_with_version_and_public(ip, canonical, version, public):
    record = run(event(ip=ip)).record
    assert (record["ip_hash"], record["ip_version"], record["ip_is_public"]) == (hmac_hex(canonical), version, public)


@pytest.mark.parametrize(
    "spellings",
    [
        ["2001:db8::1", "2001:DB8::1", "2001:0db8:0:0::1", "2001:db8:0:0:0:0:0:1"],
        ["1.2.3.4", "::ffff:1.2.3.4", "::FFFF:0102:0304"],
    ],
)
def test_every_spelling_of_one_address_gives_one_hash(spellings):
    assert len({run(event(ip=ip)).record["ip_hash"] for ip in spellings}) == 1


@pytest.mark.parametrize("name", list(MAX_CHARS))
def test_a_string_field_longer_than_its_limit_is_invalid_and_one_at_the_limit_is_not(name):
    at_limit = "1" * MAX_CHARS[name] if name != "ip" else "ffff:" * 6 + "255.255.255.255"  # the longest literal
    assert len(at_limit) == MAX_CHARS[name]
    assert isinstance(run(event(**{name: at_limit})), ProcessedLogin)
    too_long = at_limit + ("1" if name != "ip" else " ")
    assert run(event(**{name: too_long})) == Rejection(
        "invalid_field", name, f"{name} is longer than {MAX_CHARS[name]} characters"
    )


# -- 5. Normalization and the output record --------------------------------------------------------
def test_a_valid_event_becomes_the_documented_output_record():
    result = run(event())
    assert result.key == SAMPLE["user_id"].encode()
    assert (
        json.loads(result.value)
        == result.record
        == {
            "user_id": "a6397988-1649-4859-ae5f-a1407b638ca6",
            "app_version": "2.3.0",
            "app_major_version": 2,
            "device_type": "ios",
            "locale": "RI",
            "ip_hash": hmac_hex("108.228.145.239"),
            "ip_version": 4,
            "ip_is_public": True,
            "device_id_hash": hmac_hex("6221eb3d-89b5-4585-8c98-545b78e24c53", "device_id"),
            "login_ts": 1720576825,
            "login_time": "2024-07-10T02:00:25Z",
            "processed_time": "2024-07-10T02:01:40.500Z",
            "event_delay_s": 75.5,
            "repaired_fields": [],
        }
    )


def test_device_type_is_lower_cased_and_locale_upper_cased():
    record = run(event(device_type="Android", locale="ri")).record
    assert (record["device_type"], record["locale"]) == ("android", "RI")


def test_unknown_extra_fields_are_dropped():
    record = run(event(password="hunter2", nested={"a": 1})).record
    assert "password" not in record and "nested" not in record


@pytest.mark.parametrize("version, major", [("2.3.0", 2), ("10", 10), ("v2", None), ("beta", None), ("", None)])
def test_app_major_version_is_the_leading_number_or_null(version, major):
    assert run(event(app_version=version)).record["app_major_version"] == major


def test_raw_ip_and_device_id_never_appear_in_the_output():
    value = run(event()).value
    assert SAMPLE["ip"].encode() not in value
    assert SAMPLE["device_id"].encode() not in value


def test_the_hash_depends_on_the_key():
    other = process_message(event(), NOW, b"another-key-of-16-bytes+").record
    assert other["ip_hash"] != run(event()).record["ip_hash"]


@given(key=st.binary(min_size=1, max_size=200), value=st.text(max_size=300))
def test_the_hash_is_hmac_sha256_for_any_key_and_value(key, value):
    # Keys longer than SHA-256's 64-byte block are hashed first (RFC 2104): both sides of that edge.
    assert _keyed_hash(key, value) == hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def test_rejection_messages_never_quote_the_offending_value():
    for raw in (event(ip="10.1.2.300"), event(user_id=8675309), event(timestamp="20240710")):
        rejection = run(raw)
        assert "10.1.2.300" not in rejection.message and "8675309" not in rejection.message
        assert "20240710" not in rejection.message


# -- Properties: any input gives a result or a rejection, never an exception ----------------------
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
field_values = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=40),
    st.integers(),
    finite,
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.sampled_from(["1.2.3.4", "::1", "1720576825"]),
)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_result_or_a_rejection(raw):
    assert isinstance(run(raw), (ProcessedLogin, Rejection))


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_any_json_gives_a_result_or_a_rejection(value):
    assert isinstance(run(json.dumps(value).encode()), (ProcessedLogin, Rejection))


@settings(max_examples=1000, deadline=None)
@given(st.fixed_dictionaries({}, optional={name: field_values for name in [*SAMPLE, "extra"]}))
def test_login_shaped_objects_follow_the_rules(body):
    result = run(json.dumps(body).encode())
    if isinstance(result, Rejection):
        assert result.reason in ("missing_required_field", "invalid_field")
        assert result.field in SAMPLE
        return
    record = json.loads(result.value)
    assert record["user_id"] == body["user_id"] and isinstance(record["login_ts"], int)
    assert set(record["repaired_fields"]) <= set(SAMPLE) - {"user_id", "timestamp"}
    for name in ("ip", "device_id"):
        raw_value = body.get(name)
        if raw_value:
            assert record[f"{name}_hash"] == hmac_hex(raw_value, name)


# -- The shipped JSON Schema describes every output ------------------------------------------------
SCHEMA = jsonschema.Draft202012Validator(
    json.loads((Path(__file__).parent.parent / "schemas" / "processed-login.schema.json").read_text())
)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={name: field_values for name in SAMPLE}))
def test_every_output_matches_the_shipped_json_schema(body):
    result = run(json.dumps(body).encode())
    if isinstance(result, ProcessedLogin):
        SCHEMA.validate(json.loads(result.value))


def test_the_schema_rejects_a_raw_ip():
    record = {**run(event()).record, "ip": "108.228.145.239"}
    assert not SCHEMA.is_valid(record)


# -- The C decoder of the usual shape never reads a message differently from the general one -------
# process_message decodes with msgspec (LoginEvent) first and falls back to orjson (_decode_any_shape)
# on anything msgspec refuses. Were msgspec ever to accept what orjson refuses or reads otherwise, the
# rules would change with the decoder: so it is fuzzed the way an attacker would write JSON, byte by
# byte, with the pieces where JSON parsers disagree.
WHITESPACE = [b"", b" ", b"\t", b"\n", b"\r", b"\x0c", b"\xc2\xa0", b"\x00"]
KEYS = [f'"{name}"'.encode() for name in SAMPLE] + [b'"user\\u005fid"', b'"extra"', b'"USER_ID"', b'"ip\\u0000"']
STRING_PIECES = [
    b"a",
    b"1.2.3.4",
    b"1720576825",
    b"\\u0000",
    b"\\ud800",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b'\\"',
    b"\\\\",
    b"\\/",
    b"\\x",
    b"\x01",
    b"\x7f",
    b"\xc3\xa9",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",  # a surrogate encoded in UTF-8
    b"\xf4\x90\x80\x80",  # past U+10FFFF
]
NUMBERS = [b"0", b"-0", b"1720576825", b"1720576825.0", b"1.72e9", b"1e400", b"-1e400", b"9223372036854775807"]
NUMBERS += [b"9223372036854775808", b"18446744073709551616", b"-9223372036854775809", b"01", b"+1", b"NaN"]
NUMBERS += [b"Infinity", b"0x10", b"1_000"]
json_strings = st.lists(st.sampled_from(STRING_PIECES), max_size=4).map(lambda pieces: b'"' + b"".join(pieces) + b'"')
json_scalars = st.one_of(
    json_strings, st.sampled_from(NUMBERS), st.sampled_from([b"true", b"false", b"null", b"[]", b"{}", b'["a"]'])
)
members = st.tuples(st.sampled_from(KEYS), st.sampled_from(WHITESPACE), json_scalars).map(
    lambda member: member[0] + member[1] + b":" + member[1] + member[2]
)


@st.composite
def attacker_json(draw) -> bytes:
    """The usual event's members in any order, some replaced or joined by hostile ones, in hostile framing."""
    chosen = [f'"{name}":'.encode() + json.dumps(value).encode() for name, value in SAMPLE.items()]
    for _ in range(draw(st.integers(0, 3))):
        chosen.pop(draw(st.integers(0, len(chosen) - 1)))
    chosen += draw(st.lists(members, max_size=3))
    chosen = draw(st.permutations(chosen))
    around = draw(st.sampled_from(WHITESPACE[:5] * 3 + WHITESPACE[5:]))
    trailing = draw(st.sampled_from([b""] * 6 + [b"x", b"{}", b"\xff", b","]))
    return around + b"{" + b",".join(chosen) + b"}" + around + trailing


@settings(max_examples=3000, deadline=None)
@given(attacker_json())
def test_the_fast_decoder_accepts_only_what_the_general_one_reads_the_same(raw):
    from kafka_consumer_processor import _decode_any_shape, _decode_common_shape

    try:
        fast = _decode_common_shape(raw)
    except Exception:
        return  # refused: the general decoder decides, as it always did
    general = _decode_any_shape(raw, NOW)
    if isinstance(general, Rejection):
        assert run(raw) == general  # only a rule after decoding (an empty user_id, a timestamp) can say so
    else:
        assert general == fast


def test_the_usual_event_takes_the_fast_decoder():
    from kafka_consumer_processor import LoginEvent, _decode_common_shape

    assert _decode_common_shape(event()) == LoginEvent(**SAMPLE)


def test_one_value_in_different_fields_gives_unrelated_hashes():
    from kafka_consumer_processor import hash_user_id

    same = "1.2.3.4"
    record = run(event(user_id=same, ip=same, device_id=same)).record
    hashes = {record["ip_hash"], record["device_id_hash"], hash_user_id(KEY, same)}
    assert len(hashes) == 3  # with one key for all, the three were one: a device_id sent in gave any user's hash
    assert hash_user_id(KEY, same) == hmac_hex(same, "user_id")
