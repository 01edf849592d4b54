"""A plant of many lines generated from the reference line: ids, devices and controllers unique per line."""

from __future__ import annotations

import argparse

import pytest

from lineguard.plant import (
    PlantModelError,
    default_plant_path,
    load_plant,
    load_plant_lines,
    write_plant_lines,
)
from simulator.cli import _line_scenarios, build_parser
from simulator.model import CookieLine


def test_generated_lines_have_their_own_devices_and_controllers():
    reference = load_plant(default_plant_path())
    plant = load_plant_lines(default_plant_path(), 12)
    assert list(plant.lines) == [f"line{i}" for i in range(1, 13)]
    per_line = len(reference.devices())
    assert len(plant.devices()) == 12 * per_line  # no device shared between lines
    for line in plant.lines.values():
        for sensor in (s for m in line.machines.values() for s in m.all_sensors()):
            # every (device, metric) resolves to its own line: the normalizer needs nothing else
            assert plant.sensor_for(sensor.device, sensor.metric).line_id == line.id
    assert {s.device for s in plant.lines["line1"].machines["environment"].sensors} == {"a84041000181c061"}
    assert {s.device for s in plant.lines["line3"].machines["environment"].sensors} == {"a84041000181c063"}
    assert plant.lines["line7"].controller_id == "line7-controller"
    assert plant.lines["line7"].controller_api == "http://127.0.0.1:8096"
    assert plant.lines["line1"].controller_api == reference.lines["line1"].controller_api
    # the asset graph walks within a line only
    upstream = plant.graph().upstream("urn:ngsi-ld:Machine:line5-detector")
    assert upstream and all(":line5-" in entity for entity in upstream)


def test_one_line_is_the_reference_and_zero_lines_is_refused(tmp_path):
    one = load_plant_lines(default_plant_path(), 1)
    assert sorted(one.devices()) == sorted(load_plant(default_plant_path()).devices())
    with pytest.raises(PlantModelError):
        load_plant_lines(default_plant_path(), 0)
    written = write_plant_lines(default_plant_path(), 4, tmp_path / "plant-4.yaml")
    assert list(load_plant(written).lines) == ["line1", "line2", "line3", "line4"]


def test_each_generated_line_simulates_on_its_own_devices():
    plant = load_plant_lines(default_plant_path(), 3)
    sim = CookieLine(plant, "line3", seed=1)
    sim.step(1.0)
    devices = {r.device for r in sim.readings()}
    assert devices and all(d.startswith("line3-") or d == "a84041000181c063" for d in devices)


def test_scenario_applies_to_line1_and_per_line_overrides():
    args = build_parser().parse_args(["run", "--lines", "3", "--scenario", "oven_zone_overheat",
                                      "--line-scenario", "line3=mixer_torque_loss"])
    assert _line_scenarios(args, ["line1", "line2", "line3"]) == {
        "line1": "oven_zone_overheat", "line2": "normal_run", "line3": "mixer_torque_loss"}
    bad = argparse.Namespace(line=None, scenario="normal_run", line_scenario=["line9=normal_run"])
    with pytest.raises(ValueError, match="line9"):
        _line_scenarios(bad, ["line1", "line2"])


def test_every_generated_line_has_the_reference_lines_camera(tmp_path):
    from simulator.cli import camera_station

    plant = load_plant_lines(default_plant_path(), 3)
    assert [camera_station(line) for line in plant.lines.values()] == ["detector"] * 3
    # a line whose plant model has no inspecting machine gets no camera
    text = default_plant_path().read_text().replace("inspects: true", "inspects: false")
    (tmp_path / "plant.yaml").write_text(text)
    assert camera_station(next(iter(load_plant(tmp_path / "plant.yaml").lines.values()))) is None


def test_the_cameras_of_all_lines_share_one_bound_on_images_in_flight():
    import asyncio
    from types import SimpleNamespace

    from simulator.emitters import CookieHooks

    async def scenario() -> tuple[int, int, int]:
        release = asyncio.Event()
        posted: list[str] = []

        async def camera(sim: object, cookie: SimpleNamespace) -> None:
            posted.append(cookie.item_id)
            await release.wait()

        shared: set = set()
        lines = [CookieHooks([camera], max_in_flight=4, in_flight=shared) for _ in range(3)]
        for n, hooks in enumerate(lines):  # three lines, three cookies each at the same moment
            cookies = [SimpleNamespace(item_id=f"line{n + 1}-{i}") for i in range(3)]
            await hooks.on_tick(None, SimpleNamespace(detected=cookies))
        await asyncio.sleep(0)
        in_flight = len(shared)
        release.set()
        for hooks in lines:
            await hooks.stop(None)
        return in_flight, len(posted), sum(h.stats["skipped"] for h in lines)

    in_flight, posted, skipped = asyncio.run(scenario())
    assert (in_flight, posted, skipped) == (4, 4, 5)  # 9 cookies, 4 at once for all lines together, 5 skipped
