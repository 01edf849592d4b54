"""The services behind the console, called server-side (their tokens never reach the browser).

Each backend is probed every `backend_probe_s` at `/livez`, and every real call updates its status too, so the
web app can say exactly which one is down (a banner) and keep working with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from lineguard import telemetry
from lineguard.logs import event, get_logger

log = get_logger(__name__)
CALLS = telemetry.counter("console", "backend_calls", "Calls to the backends by outcome.", ["backend", "outcome"])


class BackendError(Exception):
    def __init__(self, backend: str, message: str, status: int = 502, body: Any = None) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.status = status
        self.body = body


@dataclass
class Status:
    name: str
    url: str
    purpose: str
    configured: bool = True
    up: bool | None = None  # None: not checked yet
    error: str | None = None
    checked_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "purpose": self.purpose, "configured": self.configured, "up": self.up,
                "error": self.error}


class Backend:
    def __init__(self, name: str, url: str, purpose: str, token: str | None = None, *, timeout_s: float = 5.0) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.token = token
        self.status = Status(name, self.url, purpose)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=2.0)
        self.session: aiohttp.ClientSession | None = None

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = dict(extra or {})
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    def mark(self, up: bool, error: str | None = None) -> None:
        if up != self.status.up:
            event(log, "backend_up" if up else "backend_down", level=logging.INFO if up else logging.WARNING,
                  backend=self.name, error=error)
        self.status.up = up
        self.status.error = None if up else error
        self.status.checked_at = time.time()

    async def probe(self) -> None:
        assert self.session is not None
        try:
            async with self.session.get(f"{self.url}/livez", timeout=aiohttp.ClientTimeout(total=1.5)) as resp:
                self.mark(resp.status == 200, None if resp.status == 200 else f"/livez answered {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.mark(False, _describe(exc))

    async def request(self, method: str, path: str, *, json_body: Any = None, params: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None) -> Any:
        assert self.session is not None
        try:
            async with self.session.request(method, f"{self.url}{path}", json=json_body, params=params,
                                            headers=self.headers(headers), timeout=self.timeout) as resp:
                text = await resp.text()
                try:
                    body = json.loads(text) if text else None
                except json.JSONDecodeError:
                    body = {"error": text[:300]}
                self.mark(True)
                if resp.status >= 400:
                    CALLS.labels(self.name, f"http_{resp.status // 100}xx").inc()
                    message = body.get("error") or body.get("detail") or body.get("title") \
                        if isinstance(body, dict) else None
                    raise BackendError(self.name, str(message or f"HTTP {resp.status}"), resp.status, body)
                CALLS.labels(self.name, "ok").inc()
                return body
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            CALLS.labels(self.name, "unreachable").inc()
            self.mark(False, _describe(exc))
            raise BackendError(self.name, f"unreachable ({_describe(exc)})", 503) from exc

    async def stream_lines(self, method: str, path: str, *, json_body: Any = None,
                           headers: dict[str, str] | None = None, timeout_s: float = 30.0) -> AsyncIterator[bytes]:
        """A streamed response, line by line (NDJSON)."""
        assert self.session is not None
        try:
            async with self.session.request(method, f"{self.url}{path}", json=json_body,
                                            headers=self.headers(headers),
                                            timeout=aiohttp.ClientTimeout(total=timeout_s, connect=2.0)) as resp:
                self.mark(True)
                if resp.status >= 400:
                    text = await resp.text()
                    try:
                        message = json.loads(text).get("error")
                    except (json.JSONDecodeError, AttributeError):
                        message = text[:200]
                    CALLS.labels(self.name, f"http_{resp.status // 100}xx").inc()
                    raise BackendError(self.name, str(message or f"HTTP {resp.status}"), resp.status)
                CALLS.labels(self.name, "ok").inc()
                async for line in resp.content:
                    if line.strip():
                        yield line
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            CALLS.labels(self.name, "unreachable").inc()
            self.mark(False, _describe(exc))
            raise BackendError(self.name, f"unreachable ({_describe(exc)})", 503) from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    return f"{type(exc).__name__}: {exc}"[:200]


async def follow_sse(backend: Backend, path: str, on_event: Callable[[str, dict[str, Any]], None],
                     stop: asyncio.Event) -> None:
    """Follow a server-sent event stream, reconnecting with backoff; `on_event(name, data)` per event."""
    assert backend.session is not None
    delay = 0.5
    while not stop.is_set():
        try:
            async with backend.session.get(
                    f"{backend.url}{path}", headers=backend.headers({"Accept": "text/event-stream"}),
                    timeout=aiohttp.ClientTimeout(total=None, connect=2.0, sock_read=60)) as resp:
                if resp.status != 200:
                    backend.mark(False, f"{path} answered {resp.status}")
                    raise aiohttp.ClientError(f"HTTP {resp.status}")
                backend.mark(True)
                delay = 0.5
                name, data = "message", []
                async for raw in resp.content:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not line:
                        if data:
                            try:
                                on_event(name, json.loads("\n".join(data)))
                            except (json.JSONDecodeError, ValueError) as exc:
                                event(log, "feed_event_unreadable", level=logging.WARNING, error=str(exc))
                        name, data = "message", []
                    elif line.startswith(":"):
                        continue
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if backend.status.up is not False:
                backend.mark(False, _describe(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 10.0)
