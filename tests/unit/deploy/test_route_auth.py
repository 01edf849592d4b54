"""Every HTTP route of every service, and who may call it, against the README's table "HTTP APIs and who may call
them".

The routes are found statically: every `add_get/add_post/add_put/add_patch/add_delete/add_head/add_route/
add_static` call under services/ and lineguard/ (the parse tree, so a route added anywhere is found without running
the service; a path given as a constant or an expression over module constants is evaluated in its module). Route
definitions through `web.get(...)`, `RouteTableDef`, `add_view` or `add_resource` fail the test until this walker
learns them, so no other registration style slips past. The simulator's control API (the stand-in for the plant's
line controller) is not a Lineguard service and is not walked.

Then each service's aiohttp application is built in-process, with its credentials configured, and every route the
table marks authenticated is requested without credentials (and with a wrong one): it must answer 401 or 403. This
is done for every service (ingest, vision, normalizer, advisor, actuator, notifier, console); the actuator's app is
built without a ledger, so a handler that reached it before checking the caller would answer 500 and fail here.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ("ingest", "vision", "normalizer", "advisor", "actuator", "notifier", "console")
EVERY = "every service"
AUTH_KINDS = {"none", "bearer", "webhook secret", "signed link", "session", "proxy header"}
METHOD_OF = {"add_get": "GET", "add_post": "POST", "add_put": "PUT", "add_patch": "PATCH", "add_delete": "DELETE",
             "add_head": "HEAD", "add_static": "GET"}
# Other ways to define aiohttp routes: this walker does not read them, so their use fails the test.
UNSUPPORTED_CALLS = {"add_view", "add_resource", "RouteTableDef"}
UNSUPPORTED_WEB = {"get", "post", "put", "patch", "delete", "head", "route", "view", "static"}
# The only routes that may answer without credentials, each with its reason. Marking another route `none` in the
# README needs a reason here too.
OPEN = {
    (EVERY, "GET", "/livez"): "liveness probe",
    (EVERY, "GET", "/readyz"): "readiness probe",
    (EVERY, "GET", "/metrics"): "Prometheus scrape, opened to the monitoring namespace by NetworkPolicy",
    ("ingest", "GET", "/ingest/v1/schema"): "the push body's JSON Schema, no plant data",
    ("notifier", "GET", "/v1/webhook-sink/{name}"): "development sink, served only with LINEGUARD_NOTIFIER_WEBHOOK_SINK",
    ("notifier", "POST", "/v1/webhook-sink/{name}"): "the same",
    ("console", "GET", "/"): "the app shell and sign-in page",
    ("console", "GET", "/static"): "the app's scripts and styles",
    ("console", "POST", "/api/login"): "the sign-in itself",
}
Route = tuple[str, str, str]  # service, method, path


# --- the routes in the code ------------------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _evaluate(node: ast.expr, path: Path) -> str:
    """A route path: a string constant, or an expression over the module's constants (e.g. `http_push.PATH`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    module = importlib.import_module(_module_name(path))
    try:
        value = eval(compile(ast.Expression(node), str(path), "eval"), vars(module))  # noqa: S307 - our own source
    except NameError as exc:
        raise AssertionError(f"{path}:{node.lineno}: route path {ast.unparse(node)!r} is not a module-level "
                             f"constant ({exc}); give it as one so this test can read it") from None
    assert isinstance(value, str), f"{path}:{node.lineno}: {ast.unparse(node)!r} is not a string"
    return value


def discovered_routes() -> tuple[set[Route], list[str]]:
    """(service, method, path) of every route registered under services/ and lineguard/; and unsupported uses."""
    routes: set[Route] = set()
    unsupported: list[str] = []
    files = [(EVERY, p) for p in sorted((ROOT / "lineguard").rglob("*.py"))]
    files += [(p.relative_to(ROOT / "services").parts[0], p) for p in sorted((ROOT / "services").rglob("*.py"))]
    for service, path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in UNSUPPORTED_CALLS or (isinstance(func, ast.Attribute) and name in UNSUPPORTED_WEB
                                             and isinstance(func.value, ast.Name) and func.value.id == "web"):
                unsupported.append(f"{where}: {ast.unparse(func)}")
            elif name in METHOD_OF and node.args:
                routes.add((service, METHOD_OF[name], _evaluate(node.args[0], path)))
            elif name == "add_route" and len(node.args) >= 2:
                method = _evaluate(node.args[0], path).upper()
                routes.add((service, method, _evaluate(node.args[1], path)))
    return routes, unsupported


# --- the README's table --------------------------------------------------------------------------------------------


def readme_table() -> dict[Route, tuple[str, str]]:
    """(service, method, path) -> (auth, credential) from the README section."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## HTTP APIs and who may call them\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no section '## HTTP APIs and who may call them'"
    rows: dict[Route, tuple[str, str]] = {}
    for line in match.group(1).splitlines():
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| service "):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 5, f"README row without 5 cells: {line}"
        service, method, path, auth, credential = cells
        key = (service, method, path.strip("`"))
        assert key not in rows, f"README lists {key} twice"
        rows[key] = (auth, credential)
    assert rows, "the README's route table is empty"
    return rows


def test_every_route_is_in_the_readme_table_and_every_row_is_a_route() -> None:
    found, unsupported = discovered_routes()
    assert not unsupported, f"routes defined in a way this test does not read (teach it): {unsupported}"
    table = set(readme_table())
    assert {s for s, _, _ in found} >= {EVERY, *SERVICES}, "the walker found no routes of some service"
    assert not found - table, f"routes missing from the README table: {sorted(found - table)}"
    assert not table - found, f"README rows for routes that no longer exist: {sorted(table - found)}"


def test_only_the_listed_routes_are_open_and_every_auth_names_its_kind() -> None:
    table = readme_table()
    for route, (auth, credential) in table.items():
        assert auth in AUTH_KINDS, f"{route}: auth {auth!r} is not one of {sorted(AUTH_KINDS)}"
        assert route[0] in (EVERY, *SERVICES), f"{route}: unknown service"
        if auth == "none":
            assert route in OPEN, f"{route} is open in the README but has no reason to be (OPEN in this test)"
            assert credential, f"{route}: an open route says why it is open"
        else:
            assert route not in OPEN, f"{route} is marked {auth} but this test lists it as open"
    missing = set(OPEN) - set(table)
    assert not missing, f"OPEN lists routes the README does not: {sorted(missing)}"


# --- every authenticated route refuses a caller without credentials ------------------------------------------------


def _concrete(path: str) -> str:
    """A request path for a route pattern: `{name}` -> `x1`, `{name:a|b}` -> `a`, `{name:.+}` -> `x1`."""
    def one(match: re.Match) -> str:
        pattern = match.group(2)
        if pattern and re.fullmatch(r"[\w-]+(\|[\w-]+)*", pattern):
            return pattern.split("|")[0]
        return "x1"

    concrete = re.sub(r"\{(\w+)(?::([^{}]+))?\}", one, path)
    return concrete + "/app.js" if path == "/static" else concrete


@asynccontextmanager
async def vision_app(tmp: Path) -> AsyncIterator[web.Application]:
    from lineguard.health import Health, create_app
    from services.vision.detector import LocalDetector
    from services.vision.inspections import MemoryInspectionSink
    from services.vision.service import VisionService
    from services.vision.store import LocalObjectStore

    service = VisionService(LocalDetector(), LocalObjectStore(tmp / "images"), MemoryInspectionSink(),
                            tokens=("camera-a", "camera-b"))
    app = create_app(Health("vision"))
    service.add_routes(app)
    try:
        yield app
    finally:
        await service.close()


@asynccontextmanager
async def normalizer_app(_: Path) -> AsyncIterator[web.Application]:
    from lineguard.health import Health
    from lineguard.plant import default_plant_path, load_plant
    from services.normalizer.api import AssetGraphApi
    from services.normalizer.mapping import Normalizer
    from services.normalizer.service import build_app

    yield build_app(Health("normalizer"), AssetGraphApi(Normalizer(load_plant(default_plant_path())), token="ngsi"))


@asynccontextmanager
async def advisor_app(_: Path) -> AsyncIterator[web.Application]:
    from lineguard.plant import default_plant_path, load_plant
    from services.advisor.models import ModelAlias, create_provider
    from services.advisor.service import AdvisorService
    from services.advisor.settings import AdvisorSettings

    settings = AdvisorSettings.from_env(environ={}, chat_tokens="alpha,beta", kafka_bootstrap="127.0.0.1:1")
    service = AdvisorService(settings, provider=create_provider(ModelAlias("a", "analysis", "x")),
                             plant=load_plant(default_plant_path()))
    yield service.create_app()


@asynccontextmanager
async def actuator_app(_: Path) -> AsyncIterator[web.Application]:
    from lineguard.health import Health, create_app
    from services.actuator.api import Callers, add_approval_routes

    app = create_app(Health("actuator"))
    # No ledger: a handler that touched it before identifying the caller would answer 500, not 401.
    add_approval_routes(app, None, Callers({"alice-token": "alice"}, {"console-token": "console"}),  # type: ignore[arg-type]
                        approve_wait_s=1)
    yield app


@asynccontextmanager
async def notifier_app(_: Path) -> AsyncIterator[web.Application]:
    from services.notifier.links import LinkSigner
    from services.notifier.web import FeedHub, add_routes

    async def answer(*_: object) -> None:
        raise AssertionError("a refused link must never be answered")

    app = web.Application()
    add_routes(app, FeedHub(50), LinkSigner("the-real-key", "http://h", 3600), "feed-token", answer,
               lambda jti: False, lambda: True, sink=deque())
    yield app


@asynccontextmanager
async def console_app(_: Path) -> AsyncIterator[web.Application]:
    from lineguard.embedded import free_port
    from services.console.app import Console, build_app
    from services.console.settings import ConsoleSettings

    dead = f"http://127.0.0.1:{free_port()}"
    settings = ConsoleSettings.from_env(environ={}, kafka_bootstrap="127.0.0.1:1", normalizer_url=dead,
                                        advisor_url=dead, actuator_url=dead, notifier_url=dead, voice_stt="off",
                                        voice_tts="off", backend_probe_s=0.2, auth_proxy_header="X-Forwarded-User")
    yield build_app(Console(settings, kafka=False))


@asynccontextmanager
async def ingest_app(tmp: Path) -> AsyncIterator[web.Application]:
    from lineguard.health import Health, create_app
    from services.ingest.http_api import HttpIngest
    from services.ingest.pipeline import IngestPipeline
    from services.ingest.settings import IngestSettings

    # A broker nobody listens on: the producer is built but no request that reaches it is authorised.
    settings = IngestSettings.from_env(environ={}, kafka_bootstrap="127.0.0.1:1", push_tokens=["push-token"],
                                       chirpstack_secret="cs-secret", tts_secret="tts-secret",
                                       webhook_spool_dir=tmp / "spool")
    pipeline = IngestPipeline(settings, log_level=0)  # quiet: its connection attempts are expected to fail
    app = create_app(Health("ingest"))
    HttpIngest(pipeline, settings).add_routes(app)
    try:
        yield app
    finally:
        pipeline.close(timeout=1)


APPS: dict[str, Callable[[Path], object]] = {
    "ingest": ingest_app, "vision": vision_app, "normalizer": normalizer_app, "advisor": advisor_app,
    "actuator": actuator_app, "notifier": notifier_app, "console": console_app,
}


def _forged_link() -> str:
    """A well-formed answer link signed with another key: the notifier must refuse it (403, tampered)."""
    from services.notifier.links import LinkSigner

    url = LinkSigner("not-the-key", "http://h", 3600).make("ack", "n1", "s1", "line1", "alice", 1e9)
    return url.rsplit("/", 1)[1]


@pytest.mark.parametrize("service", SERVICES)
def test_every_authenticated_route_refuses_a_caller_without_credentials(service: str, tmp_path: Path) -> None:
    guarded = {(m, p): auth for (s, m, p), (auth, _) in readme_table().items() if s == service and auth != "none"}
    assert guarded or service == "console", f"{service} has no authenticated route in the README"
    wrong = {"bearer": {"Authorization": "Bearer not-a-token"},
             "webhook secret": {"X-Lineguard-Secret": "not-the-secret"},
             "session": {"Cookie": "lineguard_session=not-a-session"},
             "proxy header": {"X-Forwarded-User": ""}}

    async def main() -> None:
        async with APPS[service](tmp_path) as app, TestClient(TestServer(app)) as client:  # type: ignore[attr-defined]
            for (method, pattern), auth in sorted(guarded.items()):
                path = _concrete(pattern)
                if auth == "signed link":
                    path = pattern.replace("{token}", _forged_link())
                attempts = [{}] + ([wrong[auth]] if auth in wrong else [])
                for headers in attempts:
                    kwargs = {"json": {}} if method == "POST" else {}
                    response = await client.request(method, path, headers=headers, **kwargs)
                    assert response.status in (401, 403), (
                        f"{service} {method} {pattern} ({auth}) answered {response.status} to "
                        f"{headers or 'no credentials'}: {(await response.text())[:200]}")

    asyncio.run(main())
