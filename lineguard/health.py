"""Health and metrics over HTTP (aiohttp): `/livez`, `/readyz`, `/metrics`.

- `/livez` is 200 while the service's loop made progress within `liveness_timeout_s` (never broker reachability:
  a broker outage must not restart every pod).
- `/readyz` is 200 once partitions are assigned and state is recovered (the service says so with `set_ready`).
- `/metrics` is the Prometheus text exposition: on the service's port by default, or alone on a port of its own
  (`LINEGUARD_METRICS_PORT`, see `create_metrics_app`) so a NetworkPolicy can open metrics to Prometheus without
  opening the API.

Each service owns one port; it adds its own API routes to the same aiohttp application.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class Health:
    def __init__(self, service: str, liveness_timeout_s: float = 60.0) -> None:
        self.service = service
        self.liveness_timeout_s = liveness_timeout_s
        self._last_progress = time.monotonic()
        self._ready = False
        self._why_not_ready = "starting"
        self.started_at = time.time()

    def beat(self) -> None:
        """Record that the loop made progress (called on every loop iteration, idle or not)."""
        self._last_progress = time.monotonic()

    def set_ready(self, ready: bool, why: str = "") -> None:
        self._ready = ready
        self._why_not_ready = "" if ready else (why or "not ready")

    @property
    def ready(self) -> bool:
        return self._ready

    def seconds_since_progress(self) -> float:
        return time.monotonic() - self._last_progress

    def alive(self) -> bool:
        return self.seconds_since_progress() < self.liveness_timeout_s

    def status(self) -> dict:
        return {
            "service": self.service,
            "alive": self.alive(),
            "ready": self._ready,
            "why_not_ready": self._why_not_ready or None,
            "seconds_since_progress": round(self.seconds_since_progress(), 3),
            "uptime_s": round(time.time() - self.started_at, 1),
        }


HEALTH_KEY: web.AppKey[Health] = web.AppKey("health", Health)
METRICS_PATH = "/metrics"


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(health: Health, client_max_size: int = 1024**2, metrics: bool = True) -> web.Application:
    """An aiohttp application with the health and metrics routes; add the service's own routes to it.

    `client_max_size` bounds a request body (aiohttp's default is 1 MiB; image batch uploads need more).
    `metrics=False` leaves `/metrics` out: it is served on its own port by `create_metrics_app`."""
    app = web.Application(client_max_size=client_max_size)

    async def livez(_: web.Request) -> web.Response:
        status = health.status()
        return web.json_response(status, status=200 if status["alive"] else 503)

    async def readyz(_: web.Request) -> web.Response:
        status = health.status()
        return web.json_response(status, status=200 if status["ready"] else 503)

    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    if metrics:
        app.router.add_get(METRICS_PATH, _metrics)
    app[HEALTH_KEY] = health
    return app


def create_metrics_app() -> web.Application:
    """`/metrics` alone, for the metrics port: a scraper reaching it reaches nothing else (small bodies only)."""
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_get(METRICS_PATH, _metrics)
    return app


async def start_metrics_server(host: str, port: int) -> web.AppRunner:
    """Serve `create_metrics_app` on host:port (0: a free port, see `runner.addresses`); `cleanup()` stops it.
    Raises OSError when the port cannot be bound."""
    runner = web.AppRunner(create_metrics_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


class BackgroundHttpServer:
    """Runs an aiohttp application on its own thread and event loop, for services whose main loop is synchronous
    (a confluent-kafka consumer loop)."""

    def __init__(self, app_factory: Callable[[], web.Application], host: str, port: int) -> None:
        self._app_factory = app_factory
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"HTTP server on {self.host}:{self.port} did not start within {timeout}s")
        if self._error:
            raise RuntimeError(f"HTTP server could not listen on {self.host}:{self.port}: {self._error}") \
                from self._error

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
        self._loop.close()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self._app_factory(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # report the port the OS chose
            self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=5)
