"""What the processor is measured against, on the same topics: each client's ceiling, a plain loop, the naive design.

    python -m bench.baselines kafka-python-passthrough   # kafka-python, tuned for throughput, no processing
    python -m bench.baselines confluent-passthrough      # confluent-kafka (librdkafka), likewise
    python -m bench.baselines confluent-plain-loop       # the twenty-line librdkafka loop around process_message
    python -m bench.baselines naive                      # the usual first script: one message at a time

A ceiling is the best its client can do, so each passthrough is tuned for its own client (large
fetches and polls, large producer batches, a longer linger) rather than given the processor's
settings; both keep the processor's durability (acks=all, idempotent producer, commit after the
batch is flushed). All read the processor's settings (INPUT_BOOTSTRAP_SERVERS, INPUT_TOPIC,
OUTPUT_TOPIC, ...) through its own config loader, so the benchmark points every contender at the
same topics the same way. SIGTERM stops each one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from kafka_consumer_processor import process_message
from login_pipeline import config as configuration
from login_pipeline.results import ProcessedLogin

stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())

POLL_RECORDS = 10_000


def kafka_python_passthrough(config: configuration.Config) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        config.input_topic,
        bootstrap_servers=list(config.input_bootstrap_servers),
        group_id=config.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=POLL_RECORDS,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    producer = KafkaProducer(
        bootstrap_servers=list(config.output_bootstrap_servers),
        acks="all",
        enable_idempotence=True,
        batch_size=1024 * 1024,
        linger_ms=20,
    )
    output = config.output_topic
    send = producer.send
    while not stopping.is_set():
        batch = consumer.poll(timeout_ms=500)
        for messages in batch.values():
            for message in messages:
                send(output, message.value)
        if batch:
            producer.flush()
            consumer.commit_async()
    consumer.close(autocommit=False)
    producer.close()


def confluent_clients(config: configuration.Config, **producer_settings: object):
    """A subscribed confluent-kafka Consumer (manual commits, from the earliest offset) and an
    idempotent acks=all Producer with `producer_settings` (librdkafka's names, dots as underscores)."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": ",".join(config.input_bootstrap_servers),
            "group.id": config.consumer_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([config.input_topic])
    producer = Producer(
        {
            "bootstrap.servers": ",".join(config.output_bootstrap_servers),
            "acks": "all",
            "enable.idempotence": True,
            **{name.replace("_", "."): value for name, value in producer_settings.items()},
        }
    )
    return consumer, producer


def confluent_passthrough(config: configuration.Config) -> None:
    consumer, producer = confluent_clients(config, linger_ms=20, queue_buffering_max_messages=1_000_000)
    output = config.output_topic
    produce = producer.produce
    while not stopping.is_set():
        messages = consumer.consume(num_messages=POLL_RECORDS, timeout=0.5)
        for message in messages:
            if message.error() is None:
                produce(output, message.value())
        if messages:
            producer.flush()
            consumer.commit(asynchronous=True)
    consumer.close()
    producer.flush(10)


def confluent_plain_loop(config: configuration.Config) -> None:
    """The loop a user would write around process_message with confluent-kafka: consume 2,000,
    process, produce (logins to the output, the rest to the dead-letter topic, no headers), flush,
    commit. What the processor's guarantees and insights cost is the difference between the two."""
    consumer, producer = confluent_clients(config, linger_ms=5)
    key = config.pii_hash_key or b"plain-loop-baseline-key"
    produce = producer.produce
    while not stopping.is_set():
        messages = consumer.consume(num_messages=2_000, timeout=0.5)
        processed_at = time.time()
        for message in messages:
            if message.error() is None:
                result = process_message(message.value(), processed_at, key)
                if isinstance(result, ProcessedLogin):
                    produce(config.output_topic, result.value, result.key)
                else:
                    produce(config.dlq_topic, message.value(), message.key())
        if messages:
            producer.flush()
            consumer.commit(asynchronous=True)
    consumer.close()
    producer.flush(10)


def naive(config: configuration.Config) -> None:
    """Auto-commit, a JSON deserializer in the consumer, produce and flush per message."""
    from kafka import KafkaConsumer, KafkaProducer

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
    key = config.pii_hash_key or b"naive-baseline-key"
    output = config.output_topic
    while not stopping.is_set():
        for messages in consumer.poll(timeout_ms=500).values():
            for message in messages:
                result = process_message(json.dumps(message.value).encode(), time.time(), key)
                producer.send(output, getattr(result, "record", None))
                producer.flush()
    consumer.close()
    producer.close()


BASELINES = {
    "kafka-python-passthrough": kafka_python_passthrough,
    "confluent-passthrough": confluent_passthrough,
    "confluent-plain-loop": confluent_plain_loop,
    "naive": naive,
}

if __name__ == "__main__":
    BASELINES[sys.argv[1]](configuration.load([], __doc__, environ=dict(os.environ)))
