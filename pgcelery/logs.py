"""The bridge's log lines: readable by default, or one JSON object per line for a log
pipeline (``--log-format json``).

Log calls about one notification pass ``extra=fields(row, task_id)``, so a JSON line
carries the channel, notification id and task id as fields of their own.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

#: The attributes a log record may carry beyond the standard ones, as JSON fields.
FIELDS = ("channel", "notification", "task_id", "listener", "database")
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/pgcelery_bridge] %(message)s"
FORMATS = ("text", "json")


def fields(**values: Any) -> dict[str, Any]:
    """``extra`` for a log call: the fields given that are set."""
    return {name: value for name, value in values.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the
    fields of ``FIELDS`` that apply, and the exception's traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, log_format: str = "text") -> None:
    """Sends pgcelery's records at ``level`` and up, and others' warnings, to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("pgcelery").setLevel(level)
