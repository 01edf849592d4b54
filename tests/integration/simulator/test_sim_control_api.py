"""The control API over real HTTP: it refuses what it must, and a correction through it fixes the product."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from lineguard.plant import default_plant_path, load_plant
from simulator.clock import SimClock
from simulator.control_api import start_control_api
from simulator.emitters import Runner
from simulator.ground_truth import GroundTruthLog, read_ground_truth
from simulator.model import CookieLine
from simulator.scenarios import load_scenario

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
PLANT = load_plant(default_plant_path())
TOKEN = "s3cret-test-token"


@contextlib.asynccontextmanager
async def running_line(scenario: str, tmp_path, speed: float):
    truth_path = tmp_path / f"{scenario}.jsonl"
    sim = CookieLine(PLANT, seed=11, clock=SimClock(speed=speed),
                     scenario=load_scenario(scenario, PLANT.lines["line1"]), ground_truth=GroundTruthLog(truth_path))
    api, port = await start_control_api(sim, TOKEN, "127.0.0.1", 0)
    runner = Runner(sim, [])
    task = asyncio.create_task(runner.run())
    session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}",
                                    headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        yield sim, session, truth_path
    finally:
        runner.stop_event.set()
        await task
        await session.close()
        await api.cleanup()
        sim.truth_log.close()


async def wait_for_sim_time(session: aiohttp.ClientSession, sim_s: float) -> float:
    while True:
        async with session.get("/api/v1/line") as response:
            assert response.status == 200
            now = (await response.json())["sim_seconds"]
        if now >= sim_s:
            return now
        await asyncio.sleep(0.02)


def rate(truth_path, defect: str, start_s: float, end_s: float) -> float:
    cookies = [c for c in read_ground_truth(truth_path, "cookie") if start_s <= c["exited_oven_s"] < end_s]
    assert len(cookies) > 100
    return sum(defect in c["defects"] for c in cookies) / len(cookies)


@pytest.mark.parametrize(
    ("scenario", "defect"),
    [("oven_zone_overheat", "burnt"), ("mixer_torque_loss", "deformed"), ("humidity_rise", "bubbled")],
)
async def test_defect_rate_falls_after_correction_through_the_control_api(tmp_path, scenario, defect):
    change = load_scenario(scenario, PLANT.lines["line1"]).expected.setpoint_change
    async with running_line(scenario, tmp_path, speed=3000) as (sim, session, truth_path):
        await wait_for_sim_time(session, 1300)
        path = f"/api/v1/machines/{change.machine}/setpoints/{change.parameter}"
        async with session.post(path, json={"value": change.value, "reason": "test correction"}) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        corrected_at = body["sim_s"]
        assert body["previous"] != body["value"] == change.value
        await wait_for_sim_time(session, corrected_at + 1200)
    sim.truth_log.close()
    baseline = rate(truth_path, defect, 0, 300)
    faulty = rate(truth_path, defect, 800, 1300)
    after = rate(truth_path, defect, corrected_at + 700, corrected_at + 1200)
    assert baseline < 0.05
    assert faulty > 0.5
    assert after < 0.15 and after < faulty / 4
    logged = read_ground_truth(truth_path, "setpoint_changed")
    assert [(c["machine"], c["parameter"], c["value"], c["source"]) for c in logged] == [
        (change.machine, change.parameter, change.value, "api")]


async def test_refuses_bad_requests_with_clear_4xx(tmp_path):
    async with running_line("normal_run", tmp_path, speed=50) as (sim, session, _):
        url = "/api/v1/machines/oven/setpoints/zone2_setpoint"

        async def post(body=None, data=None, headers=None):
            async with session.post(url, json=body, data=data, headers=headers) as response:
                return response.status, await response.json(), response.headers

        status, body, headers = await post({"value": 180.0}, headers={"Authorization": ""})
        assert status == 401 and "missing" in body["reason"] and headers["WWW-Authenticate"].startswith("Bearer")
        status, body, headers = await post({"value": 180.0}, headers={"Authorization": "Bearer wrong"})
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        status, body, _ = await post({"value": 180.0}, headers={"Authorization": f"Basic {TOKEN}"})
        assert status == 401
        status, body, _ = await post(data=b"{not json", headers={"Content-Type": "application/json"})
        assert (status, body["error"]) == (400, "bad_request") and "not valid JSON" in body["reason"]
        status, body, _ = await post([180.0])
        assert status == 400 and "JSON object" in body["reason"]
        status, body, _ = await post({"val": 180.0})
        assert status == 400 and '"value"' in body["reason"]
        status, body, _ = await post({"value": "hot"})
        assert status == 400 and "finite number" in body["reason"]
        status, body, _ = await post({"value": True})
        assert status == 400
        status, body, _ = await post({"value": 180.0, "reason": 7})
        assert status == 400 and "reason" in body["reason"]
        status, body, _ = await post({"value": 400.0})
        assert (status, body["error"]) == (422, "outside_limits")
        assert "outside the limits [150.0, 230.0]" in body["reason"]
        async with session.post("/api/v1/machines/toaster/setpoints/x", json={"value": 1}) as response:
            assert response.status == 404 and "toaster" in (await response.json())["reason"]
        async with session.post("/api/v1/machines/oven/setpoints/zone9_setpoint", json={"value": 1}) as response:
            assert response.status == 404 and "zone9_setpoint" in (await response.json())["reason"]
        async with session.get("/api/v1/changes?since=abc") as response:
            assert response.status == 400
        assert sim.machines["oven"].setpoints["zone2_setpoint"] == 190.0
        assert sim.changes == []


async def test_reads_changes_and_logs_previous_values(tmp_path):
    async with running_line("normal_run", tmp_path, speed=50) as (sim, session, truth_path):
        async with session.get("/api/v1/line") as response:
            line = await response.json()
        oven = line["machines"]["oven"]
        assert oven["state"] == "running"
        assert oven["setpoints"]["zone2_setpoint"] == {"value": 190.0, "unit": "CEL", "min": 150.0, "max": 230.0,
                                                       "max_step": 15.0, "default": 190.0}
        assert 185 < oven["readings"]["zone2_temperature"] < 195
        headers = {"Idempotency-Key": "rec-1"}
        async with session.put("/api/v1/machines/oven/setpoints/zone2_setpoint", json={"value": 180},
                               headers=headers) as response:
            first = await response.json()
        assert (first["previous"], first["value"]) == (190.0, 180.0)
        async with session.put("/api/v1/machines/oven/setpoints/zone2_setpoint", json={"value": 180},
                               headers=headers) as response:
            replay = await response.json()
        assert replay["replayed"] is True and len(sim.changes) == 1
        async with session.post("/api/v1/machines/cooling-conveyor/stop", json={"reason": "cleaning"}) as response:
            stopped = await response.json()
        assert (stopped["previous_state"], stopped["state"]) == ("running", "stopped")
        async with session.post("/api/v1/machines/cooling-conveyor/start") as response:
            assert (await response.json())["state"] == "running"
        async with session.get("/api/v1/machines/cooling-conveyor") as response:
            assert (await response.json())["state"] == "running"
        async with session.get("/api/v1/changes?since=1") as response:
            log = await response.json()
        assert [c["action"] for c in log["changes"]] == ["stop", "start"] and log["next"] == 3
        async with session.get("/healthz", headers={"Authorization": ""}) as response:
            assert response.status == 200
    kinds = [r["kind"] for r in read_ground_truth(truth_path) if r["kind"] in ("setpoint_changed", "machine_command")]
    assert kinds == ["setpoint_changed", "machine_command", "machine_command"]
