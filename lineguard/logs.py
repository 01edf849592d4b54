"""Structured logs: one JSON object per line on stdout.

Use `log = get_logger(__name__)` and `log.info("event_name", extra={"fields": {...}})`, or the shorter
`event(log, "event_name", key=value)`. The service name and, inside a span, the trace id are added.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_SERVICE = "lineguard"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": _SERVICE,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        trace_id = _current_trace_id()
        if trace_id:
            out["trace_id"] = trace_id
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
            out["stack"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def _current_trace_id() -> str | None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - a core dependency
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route every logger (ours and the libraries') to JSON lines on stdout."""
    global _SERVICE
    _SERVICE = service
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "aiokafka", "faust", "mode", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    logger.log(level, name, extra={"fields": fields})
