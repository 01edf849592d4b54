"""One start-up for every service: settings, JSON logs, tracing, the HTTP port, signals, GC tuning, exit codes.

A service is its settings, a `build` function and one call:

    def build(rt: Runtime[MySettings]) -> Service:
        loop = rt.consumer_loop(rt.settings.group_id, [topics.RECOMMENDATIONS], handle)
        return Service(loop=loop, routes=add_my_routes)

    if __name__ == "__main__":
        run_service(MySettings, build)

`run_service` reads the settings (exit 2 naming the variable), sets up JSON logs and tracing, calls `build`
(a `StartupError` or `SettingsError` there exits 2), serves `/livez`, `/readyz`, `/metrics` and the service's
routes on `LINEGUARD_HTTP_PORT` (`/metrics` alone on `LINEGUARD_METRICS_PORT` when that is set; a port that
cannot be bound exits 2), runs `restore` (readiness waits for it),
tunes the GC, then runs the consumer loop on its own thread and the background tasks on the asyncio event loop
of the main thread until SIGTERM or SIGINT. Shutdown: readiness off; the loop finishes its batch, checkpoints
and leaves the group; tasks get `stop_timeout_s` to see `rt.stopping` and return, then are cancelled; the HTTP
server finishes in-flight requests; `on_stop`; producers from `rt.producer()` are flushed and closed.
Exit codes: 0 after a requested stop, 1 when the loop or a task stopped the service (a bug, a DlqLimit), 2 for a
configuration problem.

Liveness: while a consumer loop runs, `/livez` follows the loop's progress; otherwise (start-up, restore,
services without a loop) it follows the event loop. Readiness: the loop sets it on partition assignment; a
service without a loop is ready once started, or as its `ready` callback says.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from logging import CRITICAL, ERROR, INFO
from typing import Any, Generic, NoReturn, TypeVar

from aiohttp import web

from lineguard.health import Health, create_app, start_metrics_server
from lineguard.logs import event, get_logger, setup_logging
from lineguard.settings import Settings, SettingsError
from lineguard.telemetry import setup_tracing

S = TypeVar("S", bound=Settings)

log = get_logger("lineguard.service")

EXIT_OK = 0
EXIT_FAILED = 1  # the service stopped itself: its loop or a background task failed
EXIT_CONFIG = 2  # invalid settings, unreadable configuration files, a port that cannot be bound


class StartupError(Exception):
    """A configuration problem found while building the service (a missing file, an unreachable lake): the
    runtime logs the message and exits 2, without a stack trace."""


def start_service(settings_cls: type[S]) -> S:
    """Read `settings_cls` from the environment; on an invalid value print which variable and why, and exit 2.

    Then route logs to JSON lines, install the tracer, and log the (redacted) settings the service runs with.
    `run_service` calls it; call it yourself only for a process that is not a service (a job, a tool).
    """
    try:
        settings = settings_cls.from_env()
    except SettingsError as exc:
        name = getattr(settings_cls, "__name__", "service").removesuffix("Settings").lower() or "service"
        print(f"{name}: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    setup_logging(settings.service_name, settings.log_level)
    setup_tracing(settings.service_name)
    event(log, "service_starting", service=settings.service_name, settings=settings.redacted())
    return settings


def tune_gc() -> None:
    """Call once start-up is done (plant model, schemas, models loaded). A streaming hot path allocates many
    short-lived dicts while batches in flight keep thousands alive: collect the young generation less often,
    and move what start-up built out of the collector's way for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


Task = Callable[[], Awaitable[Any]]


@dataclass
class Service:
    """What a service runs; everything is optional.

    routes: adds the service's API to the aiohttp application (health and metrics routes are already there).
    loop: a consumer loop (from `rt.consumer_loop`); it runs on its own thread.
    tasks: coroutine functions run on the event loop (pollers, an asyncio consumer); they should return soon
        after `rt.stopping` is set, and are cancelled `stop_timeout_s` later.
    restore: blocking state recovery run on a worker thread before the loop starts; readiness waits for it.
    on_stop: sync or async clean-up, after the loop, the tasks and the HTTP server have stopped.
    ready: for a service without a loop, (ready, why not) polled five times a second; default: ready.
    describe: fields added to the `config_checked` line of check mode (`--check-config`), e.g. the security
        of a Kafka client that does not come from `lineguard.kafka.clients`.
    """

    routes: Callable[[web.Application], Any] | None = None
    loop: Any = None  # lineguard.kafka.ConsumerLoop (not imported here: HTTP-only services need no Kafka)
    tasks: Sequence[Task] = ()
    restore: Callable[[], Any] | None = None
    on_stop: Callable[[], Any] | None = None
    ready: Callable[[], tuple[bool, str]] | None = None
    client_max_size: int = 1024**2
    stop_timeout_s: float = 10.0
    describe: Callable[[], dict[str, Any]] | None = None  # more for check mode's summary (lineguard.check_config)


@dataclass
class Runtime(Generic[S]):
    """What `build` gets: the settings, the health state, the stop event, and factories whose clients the
    runtime closes at shutdown."""

    settings: S
    health: Health = None  # type: ignore[assignment]
    port: int | None = None  # the bound HTTP port, once serving
    check_only: bool = False  # check mode (--check-config): build everything, reach nothing (no broker, no S3)
    metrics_port: int | None = None  # the bound metrics port (the HTTP port unless LINEGUARD_METRICS_PORT is set)
    _producers: list[Any] = field(default_factory=list)
    _stopping: asyncio.Event | None = None
    _aio: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        if self.health is None:
            self.health = Health(self.settings.service_name, self.settings.liveness_timeout_s,
                                 self.settings.restore_stall_timeout_s)

    @property
    def stopping(self) -> asyncio.Event:
        """Set when the service is asked to stop (create or read it on the event loop)."""
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    def request_stop(self, *_: object) -> None:
        """Ask the service to stop; safe from signal handlers and any thread."""
        if self._aio is not None and not self._aio.is_closed():
            self._aio.call_soon_threadsafe(self.stopping.set)

    def producer(self, serde: Any = None, **overrides: Any) -> Any:
        """A `lineguard.kafka.Producer`, flushed and closed by the runtime after `on_stop`."""
        from lineguard.kafka import Producer

        producer = Producer(self.settings, serde, **overrides)
        self._producers.append(producer)
        return producer

    def consumer_loop(self, group_id: str, topics: list[str], handler: Callable, **options: Any) -> Any:
        """A `lineguard.kafka.ConsumerLoop` reporting to this service's health (options: sink, batch_size,
        dead_letter_on, decode, producer, ...)."""
        from lineguard.kafka import ConsumerLoop

        return ConsumerLoop(self.settings, group_id, topics, handler, health=self.health, **options)


def run_service(settings_cls: type[S], build: Callable[[Runtime[S]], Service | Awaitable[Service]],
                settings: S | None = None) -> NoReturn:
    """Start the service described by `build` and exit with its exit code (see the module docs)."""
    from lineguard import check_config

    checking = check_config.check_requested()  # --check-config: build, summarise, exit (no port, no loop)
    if checking:
        check_config.enable()
    settings = settings if settings is not None else start_service(settings_cls)
    if checking:
        raise SystemExit(asyncio.run(check_config.check(Runtime(settings, check_only=True), build)))
    raise SystemExit(asyncio.run(_main(Runtime(settings), build)))


async def _main(rt: Runtime[Any], build: Callable[[Runtime[Any]], Service | Awaitable[Service]]) -> int:
    rt._aio = asyncio.get_running_loop()
    try:
        service = build(rt)
        if inspect.isawaitable(service):
            service = await service
    except (StartupError, SettingsError) as exc:
        event(log, "service_failed_to_start", level=CRITICAL, error=str(exc))
        await _close_producers(rt)
        return EXIT_CONFIG
    return await serve(rt, service)


async def serve(rt: Runtime[Any], service: Service, install_signals: bool = True, tune: bool | None = None) -> int:
    """Run a built service until it is asked to stop (or stops itself); returns the exit code. Tests call it
    directly (with `install_signals=False`) to run a service in-process; `tune` (the GC, see `tune_gc`) defaults
    to `install_signals`: a process of its own."""
    rt._aio = asyncio.get_running_loop()
    settings, health = rt.settings, rt.health
    stopping = rt.stopping
    loop = service.loop
    health.set_ready(False, "starting")
    # LINEGUARD_METRICS_PORT: /metrics alone on a port of its own (a NetworkPolicy opens it to Prometheus only)
    # (0: a free port of its own, as for the HTTP port; the HTTP port's own number: stays on the HTTP port)
    own_metrics_port = settings.metrics_port == 0 or settings.metrics_port not in (None, settings.http_port)
    app = create_app(health, client_max_size=service.client_max_size, metrics=not own_metrics_port)
    if service.routes is not None:
        service.routes(app)
    runner = web.AppRunner(app, access_log=None)  # access logs could carry secrets in URLs
    await runner.setup()
    metrics_runner: web.AppRunner | None = None
    try:
        await web.TCPSite(runner, settings.http_host, settings.http_port).start()
        if own_metrics_port:
            metrics_runner = await start_metrics_server(settings.http_host, settings.metrics_port)
    except OSError as exc:  # the port is taken, or the address is wrong
        event(log, "http_server_failed", level=CRITICAL, host=settings.http_host, port=settings.http_port,
              metrics_port=settings.metrics_port, error=str(exc))
        await runner.cleanup()
        if loop is not None:
            loop.consumer.close()
        await _close_producers(rt)
        return EXIT_CONFIG
    rt.port = runner.addresses[0][1]
    rt.metrics_port = metrics_runner.addresses[0][1] if metrics_runner is not None else rt.port
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            rt._aio.add_signal_handler(sig, stopping.set)
    loop_running = False

    async def heartbeat() -> None:
        # Liveness follows the event loop until a consumer loop runs; then the loop beats for itself.
        while True:
            if not loop_running:
                health.beat()
            if loop is None and not stopping.is_set():
                health.set_ready(*(service.ready() if service.ready is not None else (True, "")))
            await asyncio.sleep(0.2)

    beat = asyncio.create_task(heartbeat(), name="heartbeat")
    failed: list[str] = []
    tasks: list[asyncio.Task] = []
    loop_task: asyncio.Task | None = None
    try:
        if service.restore is not None:
            health.set_ready(False, "restoring state")
            started = time.monotonic()
            with health.restoring("state"):  # liveness follows the restore's progress (records read)
                await asyncio.to_thread(service.restore)
            event(log, "state_restored", seconds=round(time.monotonic() - started, 3))
        if install_signals if tune is None else tune:
            tune_gc()
        tasks = [asyncio.create_task(_guard(task, failed), name=getattr(task, "__name__", "task"))
                 for task in service.tasks]
        if loop is not None:
            loop_running = True
            loop_task = asyncio.create_task(asyncio.to_thread(loop.run), name="consumer-loop")
        event(log, "service_started", service=settings.service_name, port=rt.port,
              metrics_port=rt.metrics_port, consumer_group=getattr(loop, "group_id", None))
        stop_waiter = asyncio.create_task(stopping.wait())
        waiters: set[asyncio.Future] = {stop_waiter, *tasks}
        if loop_task is not None:
            waiters.add(loop_task)
        while not stopping.is_set():
            done, waiters = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if loop_task is not None and loop_task in done and not stopping.is_set():
                failed.append(getattr(loop, "failure", None) or "the consumer loop stopped by itself")
                break
            if failed:  # a background task crashed
                break
        stop_waiter.cancel()
    except Exception as exc:  # noqa: BLE001 - a restore that failed: stop cleanly and say why
        event(log, "service_failed", level=CRITICAL, error=f"{type(exc).__name__}: {exc}")
        failed.append(f"{type(exc).__name__}: {exc}")
    finally:
        event(log, "service_stopping", service=settings.service_name)
        stopping.set()
        health.set_ready(False, "stopping")
        if loop is not None:
            loop.stop()
            if loop_task is not None:
                with contextlib.suppress(Exception):
                    await loop_task
            else:
                loop.consumer.close()
            if getattr(loop, "failure", None) and loop.failure not in failed:
                failed.append(loop.failure)
            loop_running = False
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=service.stop_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()  # finishes in-flight requests
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if service.on_stop is not None:
            try:
                result = service.on_stop()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - still close the producers
                event(log, "service_on_stop_failed", level=ERROR, error=f"{type(exc).__name__}: {exc}")
                failed.append(f"on_stop: {exc}")
        await _close_producers(rt)
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                rt._aio.remove_signal_handler(sig)
    stats = getattr(loop, "stats", None)
    code = EXIT_FAILED if failed else EXIT_OK
    event(log, "service_stopped", level=CRITICAL if failed else INFO, service=settings.service_name, exit_code=code,
          failures=failed or None, **(stats.__dict__ if stats is not None else {}))
    return code


async def _guard(task: Task, failed: list[str]) -> None:
    try:
        await task()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a crashed background task stops the service, loudly
        event(log, "background_task_failed", level=CRITICAL, task=getattr(task, "__name__", "task"),
              error=f"{type(exc).__name__}: {exc}")
        failed.append(f"{getattr(task, '__name__', 'task')}: {type(exc).__name__}: {exc}")
        raise


async def _close_producers(rt: Runtime[Any]) -> None:
    for producer in rt._producers:
        remaining = await asyncio.to_thread(producer.close, 10.0)
        if remaining:
            event(log, "producer_closed_with_undelivered_records", level=ERROR, remaining=remaining)
    rt._producers.clear()
