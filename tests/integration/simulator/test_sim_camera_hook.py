"""The camera plugs into the per-cookie hook: one image per detected cookie, rendered from its true defects."""

from __future__ import annotations

import io

import pytest
from aiohttp import web
from PIL import Image

from lineguard.plant import default_plant_path, load_plant
from simulator.clock import SimClock
from simulator.emitters import CookieHooks, Runner, camera_hook
from simulator.ground_truth import GroundTruthLog, read_ground_truth
from simulator.model import CookieLine
from simulator.scenarios import Fault, load_scenario

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
PLANT = load_plant(default_plant_path())


async def test_each_detected_cookie_is_posted_as_an_image_with_its_true_defects(tmp_path):
    uploads: list[dict] = []

    async def intake(request: web.Request) -> web.Response:
        form = await request.post()
        uploads.append({"item_id": form["item_id"], "line_id": form["line_id"], "station": form["station"],
                        "captured_at": form["captured_at"], "image": form["image"].file.read()})
        return web.json_response({"ok": True}, status=202)

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/v1/frames", intake)
    server = web.AppRunner(app)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]

    truth_path = tmp_path / "truth.jsonl"
    sim = CookieLine(PLANT, seed=5, clock=SimClock(speed=0), ground_truth=GroundTruthLog(truth_path),
                     scenario=load_scenario("normal_run", PLANT.lines["line1"]))
    # Chill the cooling air from the start, so cookies reaching the camera are cracked.
    sim.faults.append(Fault("cooling_fault", "cooling-conveyor", start_s=0.0, magnitude=14.0))
    await Runner(sim, []).run(420)  # the air cools (tau 60 s), then cracked cookies reach the camera
    made = camera_hook(f"http://127.0.0.1:{port}/v1/frames", sim)
    assert made is not None, "simulator.camera is importable"
    hook, camera = made
    hooks = CookieHooks([hook], max_in_flight=100)
    runner = Runner(sim, [hooks])
    try:
        await runner.run(450)
        await runner.stop()
    finally:
        await camera.close()
        await server.cleanup()
        sim.truth_log.close()

    detected = [r["item_id"] for r in read_ground_truth(truth_path, "cookie_detected") if r["sim_s"] > 420]
    labels = {r["item_id"]: set(r["defects"]) for r in read_ground_truth(truth_path, "cookie")}
    assert len(uploads) == len(detected) == 30 and hooks.stats["sent"] == 30
    assert sorted(u["item_id"] for u in uploads) == sorted(detected)
    for upload in uploads:
        image = Image.open(io.BytesIO(upload["image"]))
        assert image.format == "PNG" and image.size == (256, 256)
        assert (upload["line_id"], upload["station"]) == ("line1", "detector")
        boxes = camera.ground_truth[upload["item_id"]]
        assert {b["class"] for b in boxes} == labels[upload["item_id"]]
    assert sum("cracked" in labels[u["item_id"]] for u in uploads) > 10
