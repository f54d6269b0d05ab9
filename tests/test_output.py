"""Keyed partitioning: the same partition Kafka's default partitioner picks, so per-user order holds."""

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from login_pipeline.output import keyed_partition, murmur2


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
    partitions = [keyed_partition(f"user-{n}".encode(), 3) for n in range(3000)]
    assert set(partitions) == {0, 1, 2}
    assert all(900 < partitions.count(p) < 1100 for p in range(3))
    assert keyed_partition(b"user-7", 3) == keyed_partition(b"user-7", 3)
