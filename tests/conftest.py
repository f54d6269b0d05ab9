"""Shared fixtures: real Apache Kafka clusters for the test session, on free ports.

`kafka` is the plain pair (PLAINTEXT, no authorizer). A test parametrized with
`on_both_pairs` (tests.kafka_helpers) runs once on it and once on the secured pair: SASL_SSL with
SCRAM-SHA-512, TLS from a CA generated for the session, and the standard authorizer, the processor
running as a user with only the ACLs the README lists.
"""

from __future__ import annotations

import pytest

from local_kafka import brokers
from local_kafka.secure import Security

KAFKA_FIXTURES = {"kafka", "plain_kafka", "secure_kafka"}


def pytest_collection_modifyitems(items) -> None:
    """Every test that uses real brokers is marked `kafka`, so `make test-fast` can leave them out."""
    for item in items:
        if KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(params=["kafka-python", "confluent-kafka"])
def engine(request) -> str:
    """Each real-broker test of the processor runs with each engine, so no guarantee holds for one only."""
    return request.param


@pytest.fixture(scope="session")
def plain_kafka(tmp_path_factory) -> brokers.Pair:
    """Input and output clusters, started once for the session and always stopped after it."""
    yield from _running(brokers.ephemeral_clusters(tmp_path_factory.mktemp("kafka")))


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory) -> brokers.Pair:
    """The secured input and output clusters, started on first use and stopped after the session."""
    state = tmp_path_factory.mktemp("secure-kafka")
    yield from _running(brokers.ephemeral_clusters(state, Security(state / "tls")))


@pytest.fixture
def kafka(request, plain_kafka) -> brokers.Pair:
    """The plain pair, or with `on_both_pairs` the secured pair in turn."""
    if getattr(request, "param", "plaintext") == "sasl_ssl":
        return request.getfixturevalue("secure_kafka")
    return plain_kafka


def _running(clusters: tuple[brokers.Cluster, brokers.Cluster]):
    pair = brokers.Pair(*clusters)
    brokers.up(pair.clusters)
    try:
        yield pair
    finally:
        brokers.down(pair.clusters)
