"""Shared fixtures: one pair of real Apache Kafka clusters per test session, on free ports."""

from __future__ import annotations

import pytest

from local_kafka import brokers


def pytest_collection_modifyitems(items) -> None:
    """Every test that uses real brokers is marked `kafka`, so `make test-fast` can leave them out."""
    for item in items:
        if "kafka" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(params=["kafka-python", "confluent-kafka"])
def engine(request) -> str:
    """Each real-broker test of the processor runs with each engine, so no guarantee holds for one only."""
    return request.param


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> brokers.Pair:
    """Input and output clusters, started once for the session and always stopped after it."""
    pair = brokers.Pair(*brokers.ephemeral_clusters(tmp_path_factory.mktemp("kafka")))
    brokers.up(pair.clusters)
    try:
        yield pair
    finally:
        brokers.down(pair.clusters)
