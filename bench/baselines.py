"""The two designs the processor is measured against, on the same client library and topics.

    python bench/baselines.py passthrough   # the client's honest ceiling: batches in, values out unchanged
    python bench/baselines.py naive         # the usual first script: one message at a time, flush each

Both read the processor's settings (INPUT_BOOTSTRAP_SERVERS, INPUT_TOPIC, OUTPUT_TOPIC, ...) from the
environment through the processor's own config loader, so the benchmark points all three at the same
topics the same way, with the same defaults.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kafka_consumer_processor import process_message  # noqa: E402
from login_pipeline import config as configuration  # noqa: E402
from login_pipeline.engines.kafka_python import consumer_settings, producer_settings  # noqa: E402

stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))


def passthrough(config: configuration.Config) -> None:
    """Consume a batch, produce each value unchanged, flush, commit: the same client settings, no processing."""
    consumer = KafkaConsumer(
        config.input_topic,
        **consumer_settings(config.input_bootstrap_servers, config.consumer_group, config.batch_size),
    )
    producer = KafkaProducer(**producer_settings(config.output_bootstrap_servers))
    output = config.output_topic
    while not stopping:
        batch = consumer.poll(timeout_ms=500)
        for messages in batch.values():
            for message in messages:
                producer.send(output, message.value)
        if batch:
            producer.flush()
            consumer.commit()
    consumer.close(autocommit=False)
    producer.close()


def naive(config: configuration.Config) -> None:
    """Auto-commit, a JSON deserializer in the consumer, produce and flush per message."""
    consumer = KafkaConsumer(
        config.input_topic,
        bootstrap_servers=list(config.input_bootstrap_servers),
        group_id=config.consumer_group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        value_deserializer=lambda raw: json.loads(raw),
    )
    producer = KafkaProducer(
        bootstrap_servers=list(config.output_bootstrap_servers),
        value_serializer=lambda value: json.dumps(value).encode(),
    )
    key = config.pii_hash_key
    output = config.output_topic
    while not stopping:
        for messages in consumer.poll(timeout_ms=500).values():
            for message in messages:
                result = process_message(json.dumps(message.value).encode(), time.time(), key)
                producer.send(output, result.record)
                producer.flush()
    consumer.close()
    producer.close()


if __name__ == "__main__":
    baseline = {"passthrough": passthrough, "naive": naive}[sys.argv[1]]
    baseline(configuration.load([], __doc__, environ=dict(os.environ)))
