"""The process step: each polled record through the rules, in hand-overs for the output. No I/O but a
log line when the rules raise.

Every record yields one result: the rules' ProcessedLogin or Rejection; a null value, a raising
rule, or a processed login too large for the output topic become a Rejection, whose record goes to
the dead-letter topic with its original key and bytes. Hand-overs are yielded as they fill, so the
output produces while the rest of the batch is processed.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from typing import Callable

from login_pipeline.client import HandOver, Partition, Polled
from login_pipeline.results import (
    MALFORMED_JSON,
    PROCESSING_ERROR,
    RECORD_TOO_LARGE,
    ProcessedLogin,
    ProcessingResult,
    Rejection,
)
from login_pipeline.routing import fits, near_limit, source_headers

log = logging.getLogger(__name__)

Process = Callable[[bytes, float], ProcessingResult]
NULL_VALUE = Rejection(MALFORMED_JSON, None, "the record has no value (null)")
TOO_LARGE_FOR_OUTPUT = Rejection(RECORD_TOO_LARGE, None, "the processed login is larger than the output topic takes")


class BatchProcessing:
    """One polled batch through the rules: iterate it for its hand-overs; `results` in input order after."""

    def __init__(
        self, polled: list[Polled], process: Process, processed_at: float, output_limit: int, handover_records: int
    ) -> None:
        self._polled = polled
        self._process = process
        self._processed_at = processed_at
        self._output_limit = output_limit
        self._handover_records = handover_records
        self.results: list[ProcessingResult] = []
        self.dead_letters = 0

    def __iter__(self) -> Iterator[HandOver]:
        process, processed_at, output_limit = self._process, self._processed_at, self._output_limit
        results = self.results
        for part in self._polled:
            partition = part.partition
            records = HandOver.of(partition)
            for offset, key, raw in zip(part.offsets, part.keys, part.values):
                if raw is None:  # legal in Kafka (a tombstone); not a login
                    result: ProcessingResult = NULL_VALUE
                else:
                    try:
                        result = process(raw, processed_at)
                    except Exception as error:
                        # A bug in process_message must not stall the partition: park the message instead.
                        result = processing_error(error, partition, offset)
                if (
                    result.__class__ is ProcessedLogin
                    and near_limit(output_limit, result.key, result.value)
                    and not fits(output_limit, result.key, result.value, source_headers(*partition, offset))
                ):
                    result = TOO_LARGE_FOR_OUTPUT
                if isinstance(result, ProcessedLogin):
                    records.add(offset, result.key, result.value)
                else:  # the dead-letter topic gets the original key and bytes, untouched
                    records.add(offset, key, raw, result)
                    self.dead_letters += 1
                results.append(result)
                if len(records.offsets) == self._handover_records:
                    yield records
                    records = HandOver.of(partition)
            if records.offsets:
                yield records


def processing_error(error: Exception, partition: Partition, offset: int) -> Rejection:
    """The rejection, and one log line, for process_message raising: its type and where, never its text,
    which may quote the input (an ip, say)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "unknown"
    log.error(
        "process_message raised %s (%s) at %s:%d offset %d; sent to the dead-letter topic",
        type(error).__name__,
        where,
        partition.topic,
        partition.partition,
        offset,
        extra={"topic": partition.topic, "partition": partition.partition, "offset": offset},
    )
    return Rejection(PROCESSING_ERROR, None, f"process_message raised {type(error).__name__}")
