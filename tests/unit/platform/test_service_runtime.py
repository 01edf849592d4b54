"""lineguard.service: one start-up for HTTP-only, asyncio and consumer services (in process, no broker)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from dataclasses import dataclass

from aiohttp import web

from lineguard.service import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, Runtime, Service, StartupError, _main, serve
from lineguard.settings import Settings, env_field


@dataclass(frozen=True)
class HelloSettings(Settings):
    service_name: str = env_field("hello")
    http_host: str = env_field("127.0.0.1")
    http_port: int = env_field(0)


def _settings(**overrides) -> HelloSettings:
    return HelloSettings.from_env(environ={}, **overrides)


async def _get(rt: Runtime, path: str) -> tuple[int, dict | str]:
    def fetch() -> tuple[int, dict | str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{rt.port}{path}", timeout=5) as resp:
                body = resp.read().decode()
                return resp.status, json.loads(body) if body.startswith("{") else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode())

    return await asyncio.to_thread(fetch)


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_http_service_with_a_task_serves_routes_health_and_stops_in_order():
    order: list[str] = []

    async def scenario() -> int:
        rt = Runtime(_settings())

        async def hello(_: web.Request) -> web.Response:
            return web.json_response({"hello": "world"})

        async def poll() -> None:
            order.append("task started")
            await rt.stopping.wait()
            order.append("task saw stop")

        service = Service(routes=lambda app: app.router.add_get("/v1/hello", hello), tasks=[poll],
                          on_stop=lambda: order.append("on_stop"))
        running = asyncio.create_task(serve(rt, service, install_signals=False))
        await _until(lambda: rt.port is not None and rt.health.ready)
        assert await _get(rt, "/v1/hello") == (200, {"hello": "world"})
        status, body = await _get(rt, "/livez")
        assert status == 200 and body["alive"] is True
        rt.request_stop()
        return await running

    assert asyncio.run(scenario()) == EXIT_OK
    assert order == ["task started", "task saw stop", "on_stop"]


def test_a_crashed_background_task_stops_the_service_with_exit_1():
    async def scenario() -> int:
        rt = Runtime(_settings())

        async def broken() -> None:
            raise RuntimeError("bug")

        return await serve(rt, Service(tasks=[broken]), install_signals=False)

    assert asyncio.run(scenario()) == EXIT_FAILED


def test_readiness_follows_the_ready_callback_of_a_service_without_a_loop():
    state = {"ready": False}

    async def scenario() -> None:
        rt = Runtime(_settings())
        running = asyncio.create_task(serve(rt, Service(ready=lambda: (state["ready"], "warming up")),
                                            install_signals=False))
        await _until(lambda: rt.port is not None)
        status, body = await _get(rt, "/readyz")
        assert (status, body["why_not_ready"]) == (503, "warming up")
        state["ready"] = True
        await _until(lambda: rt.health.ready)
        rt.request_stop()
        assert await running == EXIT_OK

    asyncio.run(scenario())


def test_restore_runs_before_readiness_and_its_failure_exits_1():
    async def scenario() -> int:
        def restore() -> None:
            raise OSError("state topic unreadable")

        return await serve(Runtime(_settings()), Service(restore=restore), install_signals=False)

    assert asyncio.run(scenario()) == EXIT_FAILED


def test_startup_error_in_build_exits_2():
    def build(rt: Runtime) -> Service:
        raise StartupError("plant model missing")

    assert asyncio.run(_main(Runtime(_settings()), build)) == EXIT_CONFIG


def test_a_port_in_use_exits_2():
    async def scenario() -> int:
        blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = blocker.sockets[0].getsockname()[1]
        try:
            return await serve(Runtime(_settings(http_port=port)), Service(), install_signals=False)
        finally:
            blocker.close()

    assert asyncio.run(scenario()) == EXIT_CONFIG
