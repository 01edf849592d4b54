"""Health and metrics over HTTP (aiohttp): `/livez`, `/readyz`, `/metrics`.

- `/livez` is 200 while the service's loop made progress within `liveness_timeout_s` (never broker reachability:
  a broker outage must not restart every pod). While state is restored (`Health.restoring`: a changelog, a
  ledger) it follows the restore instead: 200 while records are read or partitions finish, 503 once the restore
  made no progress for `restore_stall_timeout_s` (stuck), however long a restore that moves takes.
- `/readyz` is 200 once partitions are assigned and state is recovered (the service says so with `set_ready`);
  503 during a restore, with its progress (records read, partitions done) in the body.
- `/metrics` is the Prometheus text exposition: on the service's port by default, or alone on a port of its own
  (`LINEGUARD_METRICS_PORT`, see `create_metrics_app`) so a NetworkPolicy can open metrics to Prometheus without
  opening the API.

Each service owns one port; it adds its own API routes to the same aiohttp application.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from lineguard.logs import event, get_logger

log = get_logger("lineguard.health")


class Restore:
    """Progress of one state restore. Readers report cumulative counts per source (`update`): `read_topic`
    does it by itself for the restore current on its thread (`current_restore`)."""

    def __init__(self, what: str, log_every_s: float = 5.0) -> None:
        self.what = what
        self.log_every_s = log_every_s
        self.started = time.monotonic()
        self.last_progress = self.started
        self._sources: dict[str, tuple[int, int, int]] = {}
        self._logged = self.started
        self._lock = threading.Lock()

    def update(self, source: str, records: int, partitions_done: int = 0, partitions_total: int = 0) -> None:
        """`source` (a topic) has read `records` and finished `partitions_done` of `partitions_total` so far."""
        now = time.monotonic()
        with self._lock:
            before = self._sources.get(source)
            self._sources[source] = (records, partitions_done, partitions_total)
            # A reader that reports for the first time has connected and been assigned: that is progress too.
            if before is None or records > before[0] or partitions_done > before[1]:
                self.last_progress = now
            due = now - self._logged >= self.log_every_s
            if due:
                self._logged = now
        if due:
            event(log, "restore_progress", **self.progress())

    def progress(self) -> dict:
        with self._lock:
            sources = list(self._sources.values())
        now = time.monotonic()
        return {"what": self.what, "records_read": sum(s[0] for s in sources),
                "partitions_done": sum(s[1] for s in sources), "partitions_total": sum(s[2] for s in sources),
                "seconds": round(now - self.started, 1),
                "seconds_since_progress": round(now - self.last_progress, 1)}


_current_restore: contextvars.ContextVar[Restore | None] = contextvars.ContextVar("restore", default=None)


def current_restore() -> Restore | None:
    """The restore running on this thread (or task), if any: readers report their progress to it."""
    return _current_restore.get()


class Health:
    def __init__(self, service: str, liveness_timeout_s: float = 60.0, restore_stall_timeout_s: float = 120.0) -> None:
        self.service = service
        self.liveness_timeout_s = liveness_timeout_s
        self.restore_stall_timeout_s = restore_stall_timeout_s
        self._last_progress = time.monotonic()
        self._ready = False
        self._why_not_ready = "starting"
        self._restores: list[Restore] = []
        self.started_at = time.time()

    @contextlib.contextmanager
    def restoring(self, what: str) -> Iterator[Restore]:
        """Mark a state restore: liveness follows its progress, readiness is off and shows it. Readers on this
        thread (`read_topic`) report to it; others call `restore.update` themselves."""
        restore = Restore(what)
        self._restores.append(restore)
        token = _current_restore.set(restore)
        event(log, "restore_started", what=what)
        try:
            yield restore
        finally:
            _current_restore.reset(token)
            self._restores.remove(restore)
            self.beat()  # the loop's clock starts again now, not where it stopped when the restore began
            event(log, "restore_finished", **restore.progress())

    def restores(self) -> list[dict]:
        return [r.progress() for r in list(self._restores)]

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
        restores = list(self._restores)
        if restores:  # a restore blocks the loop: alive while it moves, however long it takes
            now = time.monotonic()
            return all(now - r.last_progress < self.restore_stall_timeout_s for r in restores)
        return self.seconds_since_progress() < self.liveness_timeout_s

    def status(self) -> dict:
        restores = self.restores()
        status = {
            "service": self.service,
            "alive": self.alive(),
            "ready": self._ready and not restores,
            "why_not_ready": ("restoring " + ", ".join(r["what"] for r in restores)) if restores
            else (self._why_not_ready or None),
            "seconds_since_progress": round(self.seconds_since_progress(), 3),
            "uptime_s": round(time.time() - self.started_at, 1),
        }
        if restores:
            status["restore"] = restores
        return status


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
        status = health.status()  # during a restore: its progress (records read, partitions done)
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
