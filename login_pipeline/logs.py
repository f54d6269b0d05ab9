"""Logging set-up, the same in the processor and in any process it starts."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure() -> None:
    """Operational logs to stderr (stdout is the insights'); the clients' own chatter from WARNING up only."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=FORMAT)
    for client in ("kafka", "librdkafka"):
        logging.getLogger(client).setLevel(logging.WARNING)
