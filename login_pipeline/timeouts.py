"""Timeouts, waits and backoffs of the Kafka clients, declared once; each engine translates them to its
client's option names (login_pipeline.engines), and the run loop's waits follow from them."""

from __future__ import annotations

# A crashed member's partitions wait this long for a new owner (Kafka's default is 45 s).
SESSION_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = SESSION_TIMEOUT_S / 4
# The rebalance handler runs where the client heartbeats (kafka-python's network thread, or inside
# librdkafka's poll): it may not wait long there, or the group evicts the member.
REVOKE_SETTLE_S = SESSION_TIMEOUT_S / 4
DELIVERY_TIMEOUT_S = 60.0  # the producer settles every record within this
# ... and a refused record's dead-letter copy within another: past this, the output is taken as gone.
ACKNOWLEDGEMENT_TIMEOUT_S = 2 * DELIVERY_TIMEOUT_S + 30
LINGER_S = 0.005  # how long the producer waits to fill a batch
# The default 30 s cap meant catching up 20 s after a broker came back; 2 s keeps recovery prompt.
RECONNECT_BACKOFF_MAX_S = 2.0
STARTUP_TIMEOUT_S = 15.0  # each start-up check of a cluster and its topics
PROBE_TIMEOUT_S = 2.0  # each readiness probe of a cluster
CLOSE_TIMEOUT_S = 10.0  # leaving the group, flushing a producer at close


def ms(seconds: float) -> int:
    """In milliseconds, as the clients' options take them."""
    return round(seconds * 1000)
