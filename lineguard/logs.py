"""Structured logs: one JSON object per line on stdout.

Use `log = get_logger(__name__)` and `log.info("event_name", extra={"fields": {...}})`, or the shorter
`event(log, "event_name", key=value)`. The service name and, inside a span, the trace id are added.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
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


class Throttle:
    """At most `limit` log lines per key in each `window_s`: a flood of bad input (every record of a broken
    producer dead-lettered) must not bury the rest of the log. What is held back is counted and reported as
    `suppressed` on the key's next line. Metrics still count every occurrence."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._keys: dict[Hashable, list] = {}  # key -> [window start, lines logged in it, suppressed]
        self._lock = threading.Lock()

    def admit(self, key: Hashable) -> int | None:
        """None: do not log this one. Otherwise log it, with the returned count of lines suppressed before it."""
        now = self._clock()
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                if len(self._keys) >= 10_000:  # keys come from the outside world (error messages): bounded
                    self._keys.clear()
                state = self._keys[key] = [now, 0, 0]
            elif now - state[0] >= self.window_s:
                state[0], state[1] = now, 0
            if state[1] >= self.limit:
                state[2] += 1
                return None
            state[1] += 1
            suppressed, state[2] = state[2], 0
            return suppressed


def throttled_event(logger: logging.Logger, throttle: Throttle, key: Hashable, name: str,
                    level: int = logging.INFO, **fields: Any) -> None:
    """`event()`, unless `throttle` holds this key back; the line after a held-back stretch says how many."""
    suppressed = throttle.admit(key)
    if suppressed is None:
        return
    if suppressed:
        fields["suppressed"] = suppressed
    event(logger, name, level, **fields)
