"""The line controller's HTTP control API (aiohttp), as the actuator sees it.

Every endpoint under /api/v1 needs `Authorization: Bearer <token>`. Errors are JSON
`{"error": "<code>", "reason": "<what to fix>"}` with a 4xx status:

    GET  /healthz                                         no auth; {"status": "ok"}
    GET  /api/v1/line                                     the line: machines, states, setpoints, readings
    GET  /api/v1/machines                                 [machine state, ...]
    GET  /api/v1/machines/{machine}                       one machine
    POST /api/v1/machines/{machine}/setpoints/{parameter} {"value": 175.0, "reason": "...", "requested_by": "..."}
    PUT  (same path, same body)
    POST /api/v1/machines/{machine}/start                 {"reason": "..."} (body optional)
    POST /api/v1/machines/{machine}/stop                  {"reason": "..."} (body optional)
    GET  /api/v1/changes?since=N                          the change log, each with its previous value

A request that carries `Idempotency-Key` is executed once; a repeat with the same key gets the first answer
again without changing anything (the actuator's replays stay harmless).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections import OrderedDict
from typing import Any

from aiohttp import web

from lineguard.logs import event
from simulator.model import ControlError, CookieLine

log = logging.getLogger("simulator.control_api")
SIM_KEY: web.AppKey[CookieLine] = web.AppKey("sim", CookieLine)
TOKEN_KEY: web.AppKey[str] = web.AppKey("token", str)
IDEMPOTENCY_KEY: web.AppKey[OrderedDict] = web.AppKey("idempotency", OrderedDict)
MAX_REMEMBERED_KEYS = 10_000


def _error(status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status, headers=headers)


_STATUS_CODES = {400: "bad_request", 404: "not_found", 409: "conflict", 422: "outside_limits"}


@web.middleware
async def _auth_and_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = 'Bearer realm="lineguard-line-controller"'
        if not header:
            return _error(401, "unauthorized", "missing Authorization header; send 'Authorization: Bearer <token>'",
                          {"WWW-Authenticate": challenge})
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "unauthorized", "the Authorization header must be 'Bearer <token>'",
                          {"WWW-Authenticate": challenge + ', error="invalid_request"'})
        expected = request.app[TOKEN_KEY]
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            return _error(401, "unauthorized", "the bearer token is not valid for this controller",
                          {"WWW-Authenticate": challenge + ', error="invalid_token"'})
    try:
        return await handler(request)
    except ControlError as refused:
        return _error(refused.status, _STATUS_CODES.get(refused.status, "refused"), refused.reason)


async def _json_body(request: web.Request, required: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ControlError(400, 'the request needs a JSON body such as {"value": 180.0}')
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ControlError(400, f"the body must be a JSON object, got {type(body).__name__}")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ControlError(400, "reason must be a string")
    requested_by = body.get("requested_by")
    if requested_by is not None and not isinstance(requested_by, str):
        raise ControlError(400, "requested_by must be a string")
    return body


def _replayed(request: web.Request) -> web.Response | None:
    key = request.headers.get("Idempotency-Key")
    if not key:
        return None
    seen = request.app[IDEMPOTENCY_KEY].get(key)
    if seen is None:
        return None
    status, body = seen
    return web.json_response({**body, "replayed": True}, status=status)


def _remember(request: web.Request, status: int, body: dict[str, Any]) -> web.Response:
    key = request.headers.get("Idempotency-Key")
    if key:
        remembered = request.app[IDEMPOTENCY_KEY]
        remembered[key] = (status, body)
        while len(remembered) > MAX_REMEMBERED_KEYS:
            remembered.popitem(last=False)
    return web.json_response(body, status=status)


async def health(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return web.json_response({"status": "ok", "line": sim.line.id, "sim_time": sim.clock.iso()})


async def get_line(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].state())


async def get_machines(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return web.json_response([sim.machine_state(m) for m in sim.line.machines])


async def get_machine(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].machine_state(request.match_info["machine"]))


async def change_setpoint(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    machine, parameter = request.match_info["machine"], request.match_info["parameter"]
    sim.machine_model(machine)  # 404 before looking at the body
    replay = _replayed(request)
    if replay is not None:
        return replay
    body = await _json_body(request, required=True)
    if "value" not in body:
        raise ControlError(400, 'the body needs "value", the new setpoint as a number')
    source = body.get("requested_by") or "api"
    change = sim.set_setpoint(machine, parameter, body["value"], source=source, reason=body.get("reason"))
    event(log, "setpoint_changed", machine=machine, parameter=parameter, previous=change["previous"],
          value=change["value"], unit=change["unit"], source=source, reason=change["reason"], sim_time=change["at"])
    return _remember(request, 200, change)


async def _command(request: web.Request, action: str) -> web.Response:
    sim = request.app[SIM_KEY]
    machine = request.match_info["machine"]
    sim.machine_model(machine)
    replay = _replayed(request)
    if replay is not None:
        return replay
    body = await _json_body(request, required=False)
    source = body.get("requested_by") or "api"
    if action == "start":
        change = sim.start_machine(machine, source=source, reason=body.get("reason"))
    else:
        change = sim.stop_machine(machine, source=source, reason=body.get("reason"))
    event(log, f"machine_{action}", machine=machine, previous_state=change["previous_state"], state=change["state"],
          source=source, reason=change["reason"], sim_time=change["at"])
    return _remember(request, 200, change)


async def start_machine(request: web.Request) -> web.Response:
    return await _command(request, "start")


async def stop_machine(request: web.Request) -> web.Response:
    return await _command(request, "stop")


async def get_changes(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    raw_since = request.query.get("since", "0")
    try:
        since = int(raw_since)
    except ValueError:
        raise ControlError(400, f"since must be an integer index into the change log, got {raw_since!r}") from None
    changes = sim.changes[max(0, since):]
    return web.json_response({"changes": changes, "next": since + len(changes) if since >= 0 else len(sim.changes)})


def create_app(sim: CookieLine, token: str) -> web.Application:
    if not token:
        raise ValueError("the control API needs a bearer token")
    app = web.Application(middlewares=[_auth_and_errors], client_max_size=64 * 1024)
    app[SIM_KEY] = sim
    app[TOKEN_KEY] = token
    app[IDEMPOTENCY_KEY] = OrderedDict()
    app.router.add_get("/healthz", health)
    app.router.add_get("/api/v1/line", get_line)
    app.router.add_get("/api/v1/machines", get_machines)
    app.router.add_get("/api/v1/machines/{machine}", get_machine)
    app.router.add_post("/api/v1/machines/{machine}/setpoints/{parameter}", change_setpoint)
    app.router.add_put("/api/v1/machines/{machine}/setpoints/{parameter}", change_setpoint)
    app.router.add_post("/api/v1/machines/{machine}/start", start_machine)
    app.router.add_post("/api/v1/machines/{machine}/stop", stop_machine)
    app.router.add_get("/api/v1/changes", get_changes)
    return app


async def start_control_api(sim: CookieLine, token: str, host: str = "127.0.0.1", port: int = 8090
                            ) -> tuple[web.AppRunner, int]:
    """Serve the API; returns the runner (to clean up) and the bound port (useful with port 0)."""
    runner = web.AppRunner(create_app(sim, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else port  # type: ignore[union-attr]
    return runner, bound
