"""Settling: reading the output's batch reports, in order, and acting on each.

A delivered batch goes to the observers and the checkpoint, with the records the output cluster
refused and rerouted marked as rejections. A failed batch is not committed, nor is any batch behind
it: the input is rewound to the first offsets in flight, so they are processed and produced again,
and NotAcknowledged is raised. A batch refused to us (a missing ACL) raises OutputGone: no retry can
help. `settle` blocks until the reports it waits for come, at most the output's own acknowledgement
timeout, or `within` seconds when given (then batches still unreported are abandoned: never
committed, delivered again by whoever holds their partitions next).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from login_pipeline.checkpoint import Checkpoint
from login_pipeline.client import Input, Output, OutputGone
from login_pipeline.events import Delivered, DeliveryFailed, Observer, ProducersReplaced
from login_pipeline.offsets import InFlight
from login_pipeline.results import Rejection

log = logging.getLogger(__name__)


class NotAcknowledged(Exception):
    """The output cluster did not acknowledge a batch; the input was rewound to produce it again."""


class Acknowledgements:
    def __init__(
        self,
        consumer: Input,
        output: Output,
        checkpoint: Checkpoint,
        observer: Observer,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._input = consumer
        self._output = output
        self._checkpoint = checkpoint
        self._observer = observer
        self._monotonic = monotonic
        self.in_flight = InFlight()

    def settle(self, keep: int, within: Optional[float] = None) -> int:
        """Read reports until at most `keep` batches are in flight; returns how many were delivered."""
        in_flight = self.in_flight
        delivered = 0
        deadline = None if within is None else self._monotonic() + within
        while len(in_flight) > keep:
            remaining = None if deadline is None else max(deadline - self._monotonic(), 0.0)
            report = self._output.acknowledgement(remaining)
            if report is None:
                in_flight.abandon_all()
                log.warning(
                    "%d batches were not acknowledged within %.1f s of a rebalance; left uncommitted, "
                    "they will be delivered again",
                    len(in_flight),
                    within,
                )
                break
            if report.producer_restarts:
                self._observer.producers_replaced(ProducersReplaced(report.producer_restarts))
            batch = in_flight.oldest()
            if batch.abandoned:
                continue
            if report.refused:
                # Retrying cannot help, and going on would commit nothing anyway: stop, with one line.
                raise OutputGone(f"the output cluster refused to take the batch ({report.failure})")
            if report.failure:
                log.error("the output cluster did not acknowledge the batch: %s", report.failure)
                assigned = self._input.assignment()
                for partition, offset in in_flight.rewind_from(batch).items():
                    if partition in assigned:
                        self._input.seek(partition, offset)
                self._observer.delivery_failed(DeliveryFailed(report.failure))
                raise NotAcknowledged(report.failure)
            delivered += 1
            for rerouted in report.rerouted:
                batch.results[rerouted.position] = Rejection(
                    rerouted.reason, None, "the output cluster refused the record"
                )
            self._observer.delivered(Delivered(batch, self._monotonic() - batch.handed_at))
            self._checkpoint.delivered(batch)
        return delivered
