"""Structured logs: one JSON object per line (or plain text), keys and credentials never included."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_FIELDS = frozenset({"authorization", "api_key", "key", "headers"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _SECRET_FIELDS:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, format: str) -> None:
    """Route the gateway's and uvicorn's loggers to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One line per upstream HTTP call from the client libraries would double the log volume.
    # sse-starlette logs every chunk's content at debug: answers are not the log's business.
    for name in ("httpx", "httpcore", "httpx2", "mcp", "sse_starlette"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # The per-request line replaces uvicorn's access log.
    logging.getLogger("uvicorn.access").disabled = True
