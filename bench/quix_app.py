"""The peer a user would pick instead: a Quix Streams Application applying this project's process_message.

Runs in its own virtualenv (the benchmark makes it under .local/bench-quix), never the processor's:

    python -m bench.quix_app      # settings from the processor's environment variables

At-least-once, as the processor; every event of the benchmark is valid, so each becomes one record
on the output topic. Quix Streams stops cleanly on SIGTERM.

QUIX_TUNED=1 gives its producer the settings the confluent-kafka passthrough runs with (linger.ms
20, a queue of a million records; Quix's own defaults are librdkafka's, with idempotence on, which
it keeps); the benchmark runs it both ways and compares against whichever is faster, so the peer
is measured at its best.
"""

from __future__ import annotations

import os
import time

from quixstreams import Application

from kafka_consumer_processor import process_message

TUNED_PRODUCER = {"linger.ms": 20, "queue.buffering.max.messages": 1_000_000}


def main() -> None:
    key = os.environ["PII_HASH_KEY"].encode()
    app = Application(
        broker_address=os.environ["INPUT_BOOTSTRAP_SERVERS"],
        consumer_group=os.environ["CONSUMER_GROUP"],
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        auto_create_topics=False,
        producer_extra_config=TUNED_PRODUCER if os.environ.get("QUIX_TUNED") == "1" else None,
    )
    source = app.topic(os.environ["INPUT_TOPIC"], value_deserializer="bytes", key_deserializer="bytes")
    target = app.topic(os.environ["OUTPUT_TOPIC"], value_serializer="bytes", key_serializer="bytes")
    frame = app.dataframe(source)
    frame = frame.apply(lambda raw: process_message(raw, time.time(), key).value)
    frame.to_topic(target)
    app.run()


if __name__ == "__main__":
    main()
