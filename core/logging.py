"""Log records with their request id, as plain text or JSON lines (LOG_FORMAT=json)."""

import json
import logging
from datetime import UTC, datetime

from core import request_id


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the request's (core/request_id.py), or '-'."""

    def filter(self, record):
        if not getattr(record, "request_id", None):
            record.request_id = request_id.current() or "-"
        return True


# What every LogRecord has; anything else on a record came from `extra=` and is logged too.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id,
    the `extra=` fields, and the exception's traceback when there is one."""

    def format(self, record):
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)
