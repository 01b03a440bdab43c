"""Structured logs: one JSON object per line (or plain text), keys and credentials never included."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_FIELDS = frozenset({"authorization", "api_key", "key", "headers"})


def _entry(created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"ts": round(created, 6), "level": level, "logger": logger, "message": message}
    for key, value in fields.items():
        if key not in _STANDARD and key not in _SECRET_FIELDS:
            entry[key] = value
    return entry


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname.lower(), record.name, record.getMessage(), vars(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def write_json_line(logger: logging.Logger, message: str, fields: dict[str, Any]) -> bool:
    """One info line written straight to the JSON handler, when that is where ``logger``'s records go
    (the configured setup); False otherwise, for the caller to log the usual way.

    Once per request: a ``LogRecord``, the handler chain and the formatter's pass over
    the record's twenty-odd attributes cost about four times the line itself.
    """
    handler = _direct
    if handler is None or handler.filters or handler.level > logging.INFO:
        return False
    current: logging.Logger | None = logger
    while current is not None and current.parent is not None:
        # Any other handler or filter on the way (a test's capture, an embedding app's) gets the usual path.
        if current.handlers or current.filters or not current.propagate:
            return False
        current = current.parent
    if current is None or current.handlers != [handler] or current.filters:
        return False
    line = orjson.dumps(_entry(time.time(), "info", logger.name, message, fields), default=str).decode()
    with handler.lock or contextlib.nullcontext():
        handler.stream.write(line + handler.terminator)
        handler.stream.flush()
    return True


# The JSON handler ``configure_logging`` installed on the root logger, when it installed one.
_direct: logging.StreamHandler[Any] | None = None


def configure_logging(level: str, format: str) -> None:
    """Route the gateway's and uvicorn's loggers to stderr in the configured format."""
    global _direct
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _direct = handler if format == "json" else None
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
