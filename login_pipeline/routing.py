"""How each record is written, whatever the client: its headers, a dead letter's form, size limits.

Both engines build records with these, so the topics look the same whichever engine wrote them.
"""

from __future__ import annotations

import logging
from typing import Optional

from kafka.record.default_records import DefaultRecordBatchBuilder

from login_pipeline.results import Rejection

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

SOURCE_OFFSET = "source.offset"
MAX_REROUTED_KEY_BYTES = 1024  # a refused record's key goes along to the dead-letter topic up to this size
# Below (size limit - this) a record's key and value cannot make it too large, whatever its headers
# (topic name at most 249 bytes, our dlq.* sentences, the batch's own overhead): no exact estimate needed.
SIZE_HEADROOM_BYTES = 2048
DEFAULT_MAX_REQUEST_SIZE = 1_048_576  # Java's, kafka-python's and librdkafka's largest request by default


def partition_headers(topic: str, partition: int) -> Headers:
    return [("source.topic", topic.encode()), ("source.partition", str(partition).encode())]


def source_headers(topic: str, partition: int, offset: int) -> Headers:
    """The headers every output and dead-letter record carries: where in the input it came from."""
    return [*partition_headers(topic, partition), (SOURCE_OFFSET, str(offset).encode())]


def dead_letter(
    key: Optional[bytes], value: Optional[bytes], rejection: Rejection, source: Headers
) -> tuple[Optional[bytes], bytes, Headers]:
    """(key, value, headers) of a rejected record's dead letter: its own bytes, and why.

    A null value goes as an empty one flagged dlq.null_value=true: Kafka refuses a record with
    neither key nor value, and a null value would read as a tombstone.
    """
    headers = [*source, ("dlq.reason", rejection.reason.encode())]
    if rejection.field is not None:
        headers.append(("dlq.field", rejection.field.encode()))
    headers.append(("dlq.error", rejection.message.encode()))
    if value is None:
        headers.append(("dlq.null_value", b"true"))
        value = b""
    return key, value, headers


def refused_dead_letter(
    key: Optional[bytes],
    value: Optional[bytes],
    rejection: Optional[Rejection],
    source: Headers,
    reason: str,
    error_name: str,
) -> tuple[Optional[bytes], bytes, Headers]:
    """(key, value, headers) for a record the output cluster refused for what it is: no value, the key
    when small, and what was left out. `rejection` is why it was a dead letter, or None for a login."""
    headers = [
        *source,
        ("dlq.reason", reason.encode()),
        ("dlq.error", f"the output cluster refused the record ({error_name}); its value is left out".encode()),
        ("dlq.value_bytes", b"null" if value is None else str(len(value)).encode()),
        ("dlq.key_bytes", b"null" if key is None else str(len(key)).encode()),
    ]
    if rejection is not None:
        headers.append(("dlq.refused_reason", rejection.reason.encode()))
    keep_key = key is not None and len(key) <= MAX_REROUTED_KEY_BYTES
    return (key if keep_key else None), b"", headers


def near_limit(limit: int, key: Optional[bytes], value: bytes) -> bool:
    """Cheap first look: False when a record this size fits `limit` whatever its headers."""
    return len(value) + (len(key) if key else 0) + SIZE_HEADROOM_BYTES > limit


def fits(limit: int, key: Optional[bytes], value: bytes, headers: Headers) -> bool:
    """Whether a record, alone in its batch, stays within `limit` bytes (a topic's max.message.bytes)."""
    return (
        not near_limit(limit, key, value)
        or DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) <= limit
    )


def effective_limits(size_limits: dict[str, int], topics: tuple[str, ...], max_request_size: int) -> dict[str, int]:
    """Each topic's limit, never above what the producer may send in one request."""
    return {topic: min(size_limits.get(topic, max_request_size), max_request_size) for topic in topics}


def unknown_size_limits(topics: list[str], error: Exception) -> dict[str, int]:
    """No topic limits could be read (not allowed to describe them): the producer's own limit applies."""
    log.warning(
        "cannot read max.message.bytes of %s (%s); assuming the producer's limit",
        ", ".join(topics),
        type(error).__name__,
    )
    return {}
