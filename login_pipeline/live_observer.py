"""The live insights (login_pipeline.live) driven by the run loop's events.

Each delivered batch goes to the windows and alert rules once; they publish what closes at every
loop turn (`tick`, or by themselves in their own process). Before a revoke's commit and before the
final commit the open windows go out as partial records, within bounded waits: whoever takes the
partitions starts new windows, and a reader adds the two up. They never hold back a commit.
"""

from __future__ import annotations

from login_pipeline.events import Assigned, Delivered, Observer, SettledBeforeRevoke, Stopping, TurnEnded
from login_pipeline.live import Live

# At a revoke the flush runs inside the heartbeat's budget, beside the run loop's settling.
REVOKE_PUBLISH_S = 1.0
FINAL_PUBLISH_TIMEOUT_S = 10.0


class LiveObserver(Observer):
    def __init__(self, live: Live) -> None:
        self.live = live

    def delivered(self, event: Delivered) -> None:
        batch = event.batch
        self.live.observe(batch.results, batch.spans, batch.processed_at)

    def assigned(self, event: Assigned) -> None:
        self.live.assigned({partition.partition for partition in event.partitions})

    def turn_ended(self, event: TurnEnded) -> None:
        self.live.tick()

    def settled_before_revoke(self, event: SettledBeforeRevoke) -> None:
        self.live.flush("revoke", REVOKE_PUBLISH_S)

    def stopping(self, event: Stopping) -> None:
        self.live.flush("stop", FINAL_PUBLISH_TIMEOUT_S)
