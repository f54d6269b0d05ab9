"""Logging set-up, the same in the processor and in any process it starts.

Text by default; LOG_FORMAT=json gives one JSON object per line (time, level, logger, message, and
`topic`/`partition`/`offset` where a line is about one record), for log pipelines to parse.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RECORD_FIELDS = ("topic", "partition", "offset")  # passed as `extra=` by lines about one record


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in RECORD_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(log_format: str = "text") -> None:
    """Operational logs to stderr (stdout is the insights'); the clients' own chatter from WARNING up only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for client in ("kafka", "librdkafka"):
        logging.getLogger(client).setLevel(logging.WARNING)
