"""The line controller's control API, as the actuator calls it (aiohttp client).

Every request has a timeout. Transient failures (a 5xx answer, a refused or reset connection, a timeout) are
retried a bounded number of times with doubling back-off; a 4xx answer is final at once (the controller said no,
asking again will not change its mind). Writes carry the action id as `Idempotency-Key`, so a retry, or a replay
after a crash, is executed by the controller at most once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from lineguard import telemetry

SERVICE = "actuator"
LATENCY = telemetry.histogram(SERVICE, "control_api_latency_seconds",
                              "Control API request latency, per attempt.", ["operation", "outcome"])
ERRORS = telemetry.counter(SERVICE, "control_api_errors", "Control API attempts that failed, by kind.",
                           ["operation", "kind"])


class ControlApiError(Exception):
    """A control API request failed for good (after retries, or at once for a 4xx)."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class _Transient(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ControlClient:
    def __init__(self, base_url: Callable[[str], str | None], token: str | None, timeout_s: float = 5.0,
                 retries: int = 3, backoff_s: float = 0.5) -> None:
        self._base_url = base_url
        self._token = token
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, line_id: str, path: str) -> str:
        base = self._base_url(line_id)
        if not base:
            raise ControlApiError(f"no control API is configured for line {line_id!r} (plant model "
                                  "controller.api or LINEGUARD_CONTROL_API_URL)")
        return base.rstrip("/") + path

    async def machine(self, line_id: str, machine_id: str) -> dict[str, Any]:
        return await self._request("read", "GET", line_id, f"/api/v1/machines/{quote(machine_id, safe='')}")

    async def set_setpoint(self, line_id: str, machine_id: str, parameter: str, value: float, key: str,
                           reason: str | None, requested_by: str) -> dict[str, Any]:
        path = f"/api/v1/machines/{quote(machine_id, safe='')}/setpoints/{quote(parameter, safe='')}"
        body = {"value": value, "reason": reason, "requested_by": requested_by}
        return await self._request("write", "POST", line_id, path, body, key)

    async def command(self, line_id: str, machine_id: str, command: str, key: str, reason: str | None,
                      requested_by: str) -> dict[str, Any]:
        path = f"/api/v1/machines/{quote(machine_id, safe='')}/{quote(command, safe='')}"
        return await self._request("write", "POST", line_id, path, {"reason": reason, "requested_by": requested_by},
                                   key)

    async def _request(self, operation: str, method: str, line_id: str, path: str,
                       body: dict[str, Any] | None = None, key: str | None = None) -> dict[str, Any]:
        url = self._url(line_id, path)
        if not self._token:
            raise ControlApiError("LINEGUARD_CONTROL_API_TOKEN is not set: the control API refuses every call")
        headers = {"Authorization": f"Bearer {self._token}"}
        if key:
            headers["Idempotency-Key"] = key
        if self._session is None:
            self._session = aiohttp.ClientSession()
        attempts = 0
        while True:
            attempts += 1
            started = time.perf_counter()
            try:
                result = await self._attempt(method, url, headers, body)
            except _Transient as exc:
                LATENCY.labels(operation, "error").observe(time.perf_counter() - started)
                if attempts > self.retries:
                    raise ControlApiError(f"{exc} (gave up after {attempts} attempts)", exc.status,
                                          attempts) from None
                await asyncio.sleep(self.backoff_s * 2 ** (attempts - 1))
                continue
            except ControlApiError as exc:
                LATENCY.labels(operation, "error").observe(time.perf_counter() - started)
                exc.attempts = attempts
                raise
            LATENCY.labels(operation, "ok").observe(time.perf_counter() - started)
            return result

    async def _attempt(self, method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None
                       ) -> dict[str, Any]:
        assert self._session is not None
        operation = "write" if method != "GET" else "read"
        try:
            async with self._session.request(method, url, json=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as response:
                text = await response.text()
                status = response.status
        except TimeoutError:
            ERRORS.labels(operation, "timeout").inc()
            raise _Transient(f"{method} {url}: no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            ERRORS.labels(operation, "connection").inc()
            raise _Transient(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if status >= 500:
            ERRORS.labels(operation, "5xx").inc()
            raise _Transient(f"{method} {url}: HTTP {status}: {_why(text)}", status)
        if status >= 400:
            ERRORS.labels(operation, "4xx").inc()
            raise ControlApiError(f"{method} {url}: HTTP {status}: {_why(text)}", status)
        try:
            data = json.loads(text)
        except ValueError:
            ERRORS.labels(operation, "bad_answer").inc()
            raise ControlApiError(f"{method} {url}: HTTP {status} with a body that is not JSON", status) from None
        if not isinstance(data, dict):
            ERRORS.labels(operation, "bad_answer").inc()
            raise ControlApiError(f"{method} {url}: expected a JSON object, got {type(data).__name__}", status)
        return data


def _why(text: str) -> str:
    """The controller's reason from an error body, short."""
    try:
        data = json.loads(text)
        if isinstance(data, dict) and data.get("reason"):
            return str(data.get("reason"))[:300]
    except ValueError:
        pass
    return text.strip()[:300] or "(empty body)"
