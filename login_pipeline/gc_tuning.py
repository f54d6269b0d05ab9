"""The garbage collector's setting for every process of the pipeline: run loop, output and live insights."""

from __future__ import annotations

import gc

# Every login makes several containers (a dict, lists, a result; the client's futures in the output
# process), and Python's default young generation of 700 ran a collection every few dozen logins.
# In-process over 100,000 logins, two runs each: 16.4-19.3 us a login with the default, 16.1-16.8
# with 50,000. In the kafka-python output process, side by side on real brokers: 1.19 -> 1.22 of
# the previous build's throughput.
YOUNG_OBJECTS = 50_000


def freeze_startup_objects() -> None:
    """Call once start-up is done: what it made lives as long as the process, out of the collector's
    sight (gc.freeze), and the young generation is collected every YOUNG_OBJECTS containers."""
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])
