"""LoRaWAN webhooks posted over real HTTP, in the ChirpStack v4 and The Things Stack v3 shapes."""

from __future__ import annotations

import base64

import pytest
from aiohttp import web

from lineguard.lorawan import decode_environment
from lineguard.plant import default_plant_path, load_plant
from simulator.clock import SimClock
from simulator.emitters import Runner
from simulator.lorawan_webhooks import LoRaWANWebhookEmitter
from simulator.model import CookieLine
from simulator.scenarios import load_scenario

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
PLANT = load_plant(default_plant_path())
DEV_EUI = PLANT.lines["line1"].machines["environment"].sensors[0].device


def zero_values(node, path=""):
    """Paths of fields whose value is "", 0 or false (The Things Stack leaves those out)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if path.endswith("decoded_payload"):
                continue
            found += zero_values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += zero_values(value, f"{path}[{i}]")
    elif node is False or node == "" or (isinstance(node, int | float) and node == 0):
        found.append(path)
    return found


async def test_uplinks_in_chirpstack_and_the_things_stack_shapes():
    received: list[tuple[str, dict, web.Request]] = []

    async def chirpstack(request: web.Request) -> web.Response:
        received.append(("chirpstack", await request.json(), request))
        return web.Response(status=200)

    async def tts(request: web.Request) -> web.Response:
        received.append(("tts", await request.json(), request))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/chirpstack", chirpstack)
    app.router.add_post("/tts/uplink", tts)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        sim = CookieLine(PLANT, seed=4, clock=SimClock(speed=0),
                         scenario=load_scenario("humidity_rise", PLANT.lines["line1"]))
        emitter = LoRaWANWebhookEmitter(f"http://127.0.0.1:{port}/chirpstack?token=abc",
                                        f"http://127.0.0.1:{port}/tts/uplink", interval_s=60,
                                        chirpstack_headers={"X-Lineguard-Secret": "cs"},
                                        tts_headers={"X-Lineguard-Secret": "tt"})
        sim_runner = Runner(sim, [emitter])
        await sim_runner.start()
        await sim_runner.run(900)
        await sim_runner.stop()
    finally:
        await runner.cleanup()

    chirp = [(body, req) for kind, body, req in received if kind == "chirpstack"]
    things = [(body, req) for kind, body, req in received if kind == "tts"]
    assert len(chirp) == len(things) == 15
    assert emitter.stats == {"chirpstack_sent": 15, "tts_sent": 15}

    for f_cnt, (body, request) in enumerate(chirp):
        assert request.query["event"] == "up" and request.query["token"] == "abc"
        assert request.content_type == "application/json" and request.headers["X-Lineguard-Secret"] == "cs"
        assert body["deviceInfo"]["devEui"] == DEV_EUI
        assert {"tenantId", "applicationId", "deviceProfileId", "deviceName"} <= body["deviceInfo"].keys()
        assert body["fCnt"] == f_cnt and body["fPort"] == 2 and len(body["devAddr"]) == 8
        assert decode_environment(base64.b64decode(body["data"])) == body["object"]
        assert body["rxInfo"][0]["crcStatus"] == "CRC_OK" and isinstance(body["rxInfo"][0]["rssi"], int)
        assert body["txInfo"]["modulation"]["lora"]["spreadingFactor"] == 7
        assert body["time"].endswith("Z") and len(body["deduplicationId"]) == 36
    assert len({b["deduplicationId"] for b, _ in chirp}) == 15

    for f_cnt, (body, request) in enumerate(things):
        ids = body["end_device_ids"]
        assert ids["dev_eui"] == DEV_EUI.upper() and ids["application_ids"]["application_id"]
        up = body["uplink_message"]
        assert up.get("f_cnt", 0) == f_cnt  # left out when 0, as The Things Stack does
        assert ("f_cnt" in up) == (f_cnt > 0)
        assert up["f_port"] == 2
        assert decode_environment(base64.b64decode(up["frm_payload"])) == up["decoded_payload"]
        assert up["settings"]["data_rate"]["lora"]["spreading_factor"] == 7 and up["settings"]["frequency"].isdigit()
        assert zero_values(body) == []
        assert request.headers["X-Downlink-Apikey"] and request.headers["X-Downlink-Push"].endswith("/push")
        assert request.headers["X-Downlink-Replace"].endswith("/replace")
        assert request.headers["X-Lineguard-Secret"] == "tt"

    # The humidity rise (from 300 s, over 300 s) shows in the decoded readings.
    humidity = [body["object"]["humidity"] for body, _ in chirp]
    assert max(humidity[:4]) < 52 and min(humidity[-3:]) > 62


async def test_unreachable_target_is_counted_not_fatal():
    sim = CookieLine(PLANT, seed=4, clock=SimClock(speed=0))
    emitter = LoRaWANWebhookEmitter("http://127.0.0.1:9/nothing-listens", None, interval_s=60, timeout_s=1)
    runner = Runner(sim, [emitter])
    await runner.start()
    await runner.run(180)
    await runner.stop()
    assert emitter.stats["chirpstack_failed"] == 3 and sim.now_s == 180
