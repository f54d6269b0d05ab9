"""Engines: one Kafka client library each, behind the interfaces of login_pipeline.client.

`kafka-python` (the default) and `confluent-kafka` (librdkafka), chosen by KAFKA_CLIENT. An engine
owns everything client-specific: its consumer and producer settings, how the security settings map
to its option names, and its start-up checks. Only the chosen one's library is imported.
"""

from __future__ import annotations

import importlib
from typing import Callable

from login_pipeline.client import Feed, Input, Output, Publisher, StartupError
from login_pipeline.config import KAFKA_PYTHON, Config
from login_pipeline.refusals import access

_MODULES = {KAFKA_PYTHON: "login_pipeline.engines.kafka_python", "confluent-kafka": "login_pipeline.engines.confluent"}
_PACKAGES = {KAFKA_PYTHON: "requirements.txt", "confluent-kafka": "requirements-confluent.txt"}


def connect(config: Config) -> tuple[Input, Output]:
    """Check both clusters and their topics, start the output, join the group; StartupError says why not.

    What the pipeline needs is decided here, once for every engine: READ on the input topic, WRITE
    on the output and dead-letter topics (whose size limits come back from the check), and with
    live insights READ and WRITE on the insights and alerts topics.
    """
    engine = _engine(config)
    security = engine.client_security(config)
    engine.check_topics(access(config, "input"), security, [config.input_topic], "READ")
    output = access(config, "output")
    live_topics = [config.insights_topic, config.alerts_topic] if config.live_insights else []
    size_limits = engine.check_topics(output, security, [config.output_topic, config.dlq_topic, *live_topics], "WRITE")
    if live_topics:
        engine.check_topics(output, security, live_topics, "READ")
    return engine.connect(config, security, size_limits)


def live_publisher(config: Config) -> Publisher:
    """For live insights: a publisher to the output cluster (its topics were checked by `connect`)."""
    engine = _engine(config)
    return engine.Publisher(config.output_bootstrap_servers, engine.client_security(config))


def live_feed(config: Config, since_s: float) -> Feed:
    """For live insights: the insights and alerts topics of the output cluster, from `since_s` (epoch seconds) on."""
    engine = _engine(config)
    topics = [config.insights_topic, config.alerts_topic]
    return engine.Feed(config.output_bootstrap_servers, engine.client_security(config), topics, since_s)


def probes(config: Config) -> dict[str, Callable[[], bool]]:
    """For each cluster ("input", "output"), one bounded request (a couple of seconds at most) that
    says whether it answers, using clients of its own: the readiness probe's view."""
    engine = _engine(config)
    security = engine.client_security(config)
    return {
        "input": engine.topic_probe(config.input_bootstrap_servers, security, config.input_topic),
        "output": engine.topic_probe(config.output_bootstrap_servers, security, config.output_topic),
    }


def _engine(config: Config):
    try:
        return importlib.import_module(_MODULES[config.kafka_client])
    except ModuleNotFoundError as missing:
        raise StartupError(
            f"KAFKA_CLIENT={config.kafka_client} needs the Python package {missing.name!r}: "
            f"pip install -r {_PACKAGES[config.kafka_client]}"
        ) from None
