"""LINEGUARD_METRICS_PORT: `/metrics` alone on a second port, so a NetworkPolicy can open metrics to Prometheus
without opening the API (deploy/k8s: the container port named `metrics`)."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from dataclasses import dataclass

import pytest
from aiohttp import web

from lineguard import telemetry
from lineguard.service import EXIT_CONFIG, EXIT_OK, Runtime, Service, serve
from lineguard.settings import Settings, SettingsError, env_field


@dataclass(frozen=True)
class PortSettings(Settings):
    service_name: str = env_field("ports")
    http_host: str = env_field("127.0.0.1")
    http_port: int = env_field(0)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _serving(rt: Runtime, service: Service) -> asyncio.Task:
    running = asyncio.create_task(serve(rt, service, install_signals=False))
    deadline = asyncio.get_running_loop().time() + 10
    while rt.metrics_port is None or not rt.health.ready:
        assert not running.done(), f"the service stopped: {running.result()}"
        assert asyncio.get_running_loop().time() < deadline, "the service did not start"
        await asyncio.sleep(0.01)
    return running


def _api(app: web.Application) -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"plant": "data"})

    app.router.add_get("/v1/hello", hello)


def test_metrics_alone_on_their_own_port_and_gone_from_the_api_port() -> None:
    telemetry.counter("ports", "scrapes", "Scrapes seen.").inc(2)

    async def scenario() -> tuple[int, dict[str, tuple[int, str]]]:
        rt = Runtime(PortSettings.from_env(environ={"LINEGUARD_METRICS_PORT": "0"}))
        running = await _serving(rt, Service(routes=_api))
        assert rt.metrics_port not in (None, rt.port)
        seen = {f"{where}{path}": await asyncio.to_thread(_get, port, path)
                for where, port in (("metrics", rt.metrics_port), ("http", rt.port))
                for path in ("/metrics", "/livez", "/readyz", "/v1/hello")}
        rt.request_stop()
        return await running, seen

    code, seen = asyncio.run(scenario())
    assert code == EXIT_OK
    status, body = seen["metrics/metrics"]
    assert status == 200 and "lineguard_ports_scrapes_total 2.0" in body
    # The metrics port answers nothing else: no health details, no API.
    assert [seen[f"metrics{p}"][0] for p in ("/livez", "/readyz", "/v1/hello")] == [404, 404, 404]
    # The API port keeps health and the API but no longer serves /metrics.
    assert seen["http/metrics"][0] == 404
    assert [seen[f"http{p}"][0] for p in ("/livez", "/readyz", "/v1/hello")] == [200, 200, 200]


def test_without_the_setting_metrics_stay_on_the_http_port() -> None:
    async def scenario() -> tuple[int, int, tuple[int, str]]:
        rt = Runtime(PortSettings.from_env(environ={}))
        running = await _serving(rt, Service(routes=_api))
        ports = (rt.port, rt.metrics_port)
        scraped = await asyncio.to_thread(_get, rt.port, "/metrics")
        rt.request_stop()
        return await running, ports, scraped

    code, (http, metrics), (status, body) = asyncio.run(scenario())
    assert code == EXIT_OK and http == metrics
    assert status == 200 and "# TYPE" in body


def test_a_metrics_port_that_cannot_be_bound_exits_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rt = Runtime(PortSettings.from_env(environ={"LINEGUARD_METRICS_PORT": str(port)}))
        assert asyncio.run(serve(rt, Service(), install_signals=False)) == EXIT_CONFIG


def test_metrics_port_is_validated() -> None:
    with pytest.raises(SettingsError, match="LINEGUARD_METRICS_PORT"):
        PortSettings.from_env(environ={"LINEGUARD_METRICS_PORT": "70000"})
    with pytest.raises(SettingsError, match="LINEGUARD_METRICS_PORT"):
        PortSettings.from_env(environ={"LINEGUARD_METRICS_PORT": "metrics"})
    assert PortSettings.from_env(environ={"LINEGUARD_METRICS_PORT": "9090"}).metrics_port == 9090
