"""The actuator's control API client over real HTTP: against the simulator's control API (auth, idempotency,
read-back) and against a controller that answers 5xx, 4xx, slowly or not at all. Retries are bounded and happen for
5xx answers, refused connections and timeouts only, never for a 4xx."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from lineguard.embedded import free_port
from lineguard.plant import default_plant_path, load_plant
from services.actuator.control import ControlApiError, ControlClient
from simulator.clock import SimClock
from simulator.control_api import start_control_api
from simulator.model import CookieLine

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
PLANT = load_plant(default_plant_path())
TOKEN = "control-test-token"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_against_the_simulator_writes_once_per_key_and_reads_back() -> None:
    sim = CookieLine(PLANT, seed=3, clock=SimClock(speed=0))
    runner, port = await start_control_api(sim, TOKEN, "127.0.0.1", 0)
    client = ControlClient(lambda _line: f"http://127.0.0.1:{port}", TOKEN, timeout_s=2, retries=2, backoff_s=0)
    try:
        first = await client.set_setpoint("line1", "oven", "zone2_setpoint", 175.0, "rec-x-a0", "why", "actuator")
        again = await client.set_setpoint("line1", "oven", "zone2_setpoint", 175.0, "rec-x-a0", "why", "actuator")
        assert first["previous"] == 190.0 and again.get("replayed") is True
        assert len(sim.changes) == 1 and sim.changes[0]["source"] == "actuator"
        machine = await client.machine("line1", "oven")
        assert machine["setpoints"]["zone2_setpoint"]["value"] == 175.0
        with pytest.raises(ControlApiError, match="HTTP 422") as refused:
            await client.set_setpoint("line1", "oven", "zone2_setpoint", 400.0, "rec-x-a1", None, "actuator")
        assert refused.value.status == 422 and refused.value.attempts == 1
        wrong = ControlClient(lambda _line: f"http://127.0.0.1:{port}", "not-the-token", retries=3, backoff_s=0)
        with pytest.raises(ControlApiError, match="HTTP 401") as unauthorised:
            await wrong.machine("line1", "oven")
        assert unauthorised.value.attempts == 1
        await wrong.close()
    finally:
        await client.close()
        await runner.cleanup()


@pytest.mark.parametrize(("status", "retried"), [(500, True), (502, True), (503, True), (400, False),
                                                 (404, False), (409, False), (422, False)])
async def test_only_5xx_answers_are_retried_and_never_forever(status: int, retried: bool) -> None:
    attempts: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        attempts.append(request.headers.get("Idempotency-Key"))
        return web.json_response({"error": "x", "reason": f"status {status}"}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner, url = await serve(app)
    client = ControlClient(lambda _line: url, TOKEN, timeout_s=2, retries=3, backoff_s=0.01)
    try:
        with pytest.raises(ControlApiError, match=f"HTTP {status}: status {status}") as failed:
            await client.set_setpoint("line1", "oven", "zone2_setpoint", 175.0, "key-1", None, "actuator")
        assert len(attempts) == (4 if retried else 1) == failed.value.attempts
        assert set(attempts) == {"key-1"}  # every retry carries the same idempotency key
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_5xx_then_success_is_one_call_for_the_caller() -> None:
    answers = [503, 200]

    async def answer(request: web.Request) -> web.Response:
        status = answers.pop(0)
        return web.json_response({"previous": 190.0, "value": 175.0} if status == 200 else {"reason": "busy"},
                                 status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner, url = await serve(app)
    client = ControlClient(lambda _line: url, TOKEN, timeout_s=2, retries=3, backoff_s=0.01)
    try:
        assert (await client.set_setpoint("line1", "oven", "zone2_setpoint", 175.0, "k", None, "a"))["value"] == 175
    finally:
        await client.close()
        await runner.cleanup()


async def test_slow_and_unreachable_controllers_fail_within_a_bound() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)  # longer than the client's timeout
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    runner, url = await serve(app)
    client = ControlClient(lambda _line: url, TOKEN, timeout_s=0.3, retries=2, backoff_s=0.01)
    started = time.monotonic()
    try:
        with pytest.raises(ControlApiError, match=r"no answer within 0.3 s \(gave up after 3 attempts\)"):
            await client.machine("line1", "oven")
        assert time.monotonic() - started < 3
    finally:
        await client.close()
        await runner.cleanup()
    closed = ControlClient(lambda _line: f"http://127.0.0.1:{free_port()}", TOKEN, timeout_s=1, retries=2,
                           backoff_s=0.01)
    try:
        with pytest.raises(ControlApiError, match=r"ClientConnectorError.*gave up after 3 attempts"):
            await closed.machine("line1", "oven")
    finally:
        await closed.close()
    unconfigured = ControlClient(lambda _line: None, TOKEN)
    with pytest.raises(ControlApiError, match="no control API is configured for line 'line1'"):
        await unconfigured.machine("line1", "oven")
    tokenless = ControlClient(lambda _line: url, None)
    with pytest.raises(ControlApiError, match="LINEGUARD_CONTROL_API_TOKEN is not set"):
        await tokenless.machine("line1", "oven")


@pytest.mark.parametrize(("write_status", "attempts", "why"), [
    (503, 4, "HTTP 503: busy (gave up after 4 attempts)"),
    (422, 1, "HTTP 422: outside the interlock window"),
    (0, 4, "no answer within 0.3 s (gave up after 4 attempts)"),  # slow: every attempt times out
])
async def test_an_approved_action_whose_write_fails_ends_failed_with_the_whole_audit_trail(
        write_status: int, attempts: int, why: str) -> None:
    """The actuator with the real client: reads come from the simulator's line, writes fail as the controller
    says; the action ends `failed` with the reason, after a bounded number of attempts, every step recorded."""
    from services.actuator.actions import Actuator
    from services.actuator.policy import load_policy
    from services.actuator.settings import POLICY_FILE

    sim = CookieLine(PLANT, seed=3, clock=SimClock(speed=0))
    writes: list[str | None] = []

    async def machine(request: web.Request) -> web.Response:
        return web.json_response(sim.machine_state(request.match_info["machine"]))

    async def write(request: web.Request) -> web.Response:
        writes.append(request.headers.get("Idempotency-Key"))
        if write_status == 0:
            await asyncio.sleep(1.0)
            return web.json_response({})
        reason = "busy" if write_status >= 500 else "outside the interlock window"
        return web.json_response({"error": "x", "reason": reason}, status=write_status)

    app = web.Application()
    app.router.add_get("/api/v1/machines/{machine}", machine)
    app.router.add_post("/api/v1/machines/{machine}/setpoints/{parameter}", write)
    runner, url = await serve(app)
    client = ControlClient(lambda _line: url, TOKEN, timeout_s=0.3, retries=3, backoff_s=0.01)
    trail: list[dict] = []

    async def publish(record: dict) -> None:
        trail.append(dict(record))

    actuator = Actuator(PLANT, load_policy(POLICY_FILE, PLANT), client, publish)
    try:
        (aid,) = await actuator.intake({
            "id": "rec-w", "line_id": "line1", "title": "hot", "evidence": [],
            "proposed_actions": [{"machine_entity_id": "urn:ngsi-ld:Machine:line1-oven",
                                  "parameter": "zone2_setpoint", "value": 175.0, "unit_code": "CEL",
                                  "reason": "zone 2 runs hot"}]})
        done = await actuator.approve(aid, "alice", None, wait_s=30)
    finally:
        await client.close()
        await runner.cleanup()
    assert done["status"] == "failed" and why in done["reason"] and why in done["error"]
    assert done["attempts"] == attempts == len(writes) and set(writes) == {aid}
    assert [r["status"] for r in trail] == ["proposed", "pending_approval", "approved", "executing", "failed"]
    assert sim.machines["oven"].setpoints["zone2_setpoint"] == 190.0
