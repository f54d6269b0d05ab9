"""What the run loop tells its observers, as typed events, and the observer interface.

The run loop (login_pipeline.run_loop) and the checkpoint (login_pipeline.checkpoint) publish these
at fixed points; observers (the running insights and their printed block, the Prometheus metrics,
the live insights, health) listen and never steer. Every method is called on the run loop's thread,
or inside `Input.poll`/`Input.close` for the revoke and commit-answer events, and must return
promptly: whatever an observer does in it delays the loop. An observer overrides only what it
listens to; `Observer`'s methods do nothing.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from login_pipeline.client import Partition
from login_pipeline.offsets import InFlightBatch


class TurnStarted(NamedTuple):
    at: float  # monotonic clock: the loop came round


class HandedOver(NamedTuple):
    """A batch was processed and handed to the output."""

    consumed: int  # records polled
    logins: int  # records for the output topic
    dead_letters: int  # records for the dead-letter topic
    processing_s: float  # from the first record processed to the batch's end handed over


class Delivered(NamedTuple):
    """The output acknowledged every record of a batch; its results hold the final outcome of each
    (a record the cluster refused and rerouted is a Rejection there). Once a batch, however often retried."""

    batch: InFlightBatch
    acknowledgement_s: float  # from hand-over to the report


class DeliveryFailed(NamedTuple):
    """A batch was not acknowledged; the input was rewound to produce it again."""

    failure: str


class ProducersReplaced(NamedTuple):
    """The output replaced producers after a fatal error (an operator's signal), since its previous report."""

    producers: int


class CommitSent(NamedTuple):
    duration_s: float  # how long the commit call held the loop


class CommitAnswered(NamedTuple):
    error: Optional[str]  # None: the group took it


class Assigned(NamedTuple):
    partitions: frozenset[Partition]  # what the member holds now (maybe nothing)


class Revoking(NamedTuple):
    """Partitions are about to go; what is in flight is settled (bounded) next."""

    partitions: frozenset[Partition]


class SettledBeforeRevoke(NamedTuple):
    """Deliveries before a revoke are settled; the commit before the partitions go comes next."""

    partitions: frozenset[Partition]


class TurnEnded(NamedTuple):
    in_flight: int  # batches handed over and not yet reported
    assigned: int  # partitions held
    lags: Optional[dict[Partition, int]]  # records behind each assigned partition; None when any is unknown


class Stopping(NamedTuple):
    """The loop has stopped polling and settled what it could; the final commit comes next."""


class Stopped(NamedTuple):
    """The final commit was answered; the input and output are closed next."""

    lags: Optional[dict[Partition, int]]  # read afresh


class Observer:
    """Listens to the run loop. Each method does nothing unless overridden."""

    def turn_started(self, event: TurnStarted) -> None: ...
    def handed_over(self, event: HandedOver) -> None: ...
    def delivered(self, event: Delivered) -> None: ...
    def delivery_failed(self, event: DeliveryFailed) -> None: ...
    def producers_replaced(self, event: ProducersReplaced) -> None: ...
    def commit_sent(self, event: CommitSent) -> None: ...
    def commit_answered(self, event: CommitAnswered) -> None: ...
    def assigned(self, event: Assigned) -> None: ...
    def revoking(self, event: Revoking) -> None: ...
    def settled_before_revoke(self, event: SettledBeforeRevoke) -> None: ...
    def turn_ended(self, event: TurnEnded) -> None: ...
    def stopping(self, event: Stopping) -> None: ...
    def stopped(self, event: Stopped) -> None: ...


class Observers(Observer):
    """Several observers as one: each event goes to those that listen to it, in the order given.

    Each method is bound once, here, to the handlers that override it, so an event nobody listens
    to costs one empty loop.
    """

    def __init__(self, *observers: Observer) -> None:
        for name in EVENTS:
            handlers = [getattr(o, name) for o in observers if getattr(type(o), name) is not getattr(Observer, name)]
            setattr(self, name, _fan_out(handlers))


EVENTS = tuple(name for name in vars(Observer) if not name.startswith("_"))


def _fan_out(handlers: list[Callable[[Any], None]]) -> Callable[[Any], None]:
    def notify(event: Any) -> None:
        for handler in handlers:
            handler(event)

    return notify
