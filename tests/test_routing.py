"""The output side's pure parts: keyed partitioning as Kafka's default partitioner does it, size limits, headers."""

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2
from kafka.record.default_records import DefaultRecordBatchBuilder

from login_pipeline.engines.kafka_python_output import murmur2, partition_of
from login_pipeline.routing import fits, near_limit, source_headers


@settings(max_examples=3000)
@given(st.binary(max_size=80))
def test_murmur2_equals_kafka_pythons(data):
    assert murmur2(data) == kafka_python_murmur2(data)


def test_known_java_client_values():
    # Values from Apache Kafka's own test of Utils.murmur2 (signed ints there; unsigned here).
    assert murmur2(b"21") & 0xFFFFFFFF == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") & 0xFFFFFFFF == (-790332482) & 0xFFFFFFFF
    assert murmur2(b"") & 0xFFFFFFFF == 275646681


def test_keyed_partition_spreads_keys_and_is_stable():
    partitions = [partition_of(murmur2(f"user-{n}".encode()), 3) for n in range(3000)]
    assert set(partitions) == {0, 1, 2}
    assert all(900 < partitions.count(p) < 1100 for p in range(3))
    assert partition_of(murmur2(b"user-7"), 3) == partition_of(murmur2(b"user-7"), 3)


def test_a_record_fits_a_topic_limit_by_its_full_size_headers_included():
    headers = source_headers("user-login", 2, 123456)
    assert fits(1_000, b"user-1", b"v" * 500, headers)
    assert not fits(1_000, b"user-1", b"v" * 1_000, headers)
    exact = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"k", b"v" * 900, headers)
    assert fits(exact, b"k", b"v" * 900, headers) and not fits(exact - 1, b"k", b"v" * 900, headers)
    assert fits(1_048_576, None, b"v" * 1_000_000, headers)  # far enough below: no exact estimate needed
    assert not near_limit(1_048_576, None, b"v" * 1_000_000)


def test_source_headers_name_the_input_coordinates():
    assert source_headers("user-login", 2, 17) == [
        ("source.topic", b"user-login"),
        ("source.partition", b"2"),
        ("source.offset", b"17"),
    ]
