"""The twin built from the asset graph: flow order, readings against normal ranges, state since when, alarms,
defect rates by class, trends."""

from __future__ import annotations

from lineguard.plant import AssetGraph, default_plant_path, load_plant
from services.console.twin import Twin

PLANT = load_plant(default_plant_path())
ENTITIES = AssetGraph(PLANT).entities()
CLASSES = ["cracked", "deformed", "bubbled", "burnt"]


def key_values(entity: dict) -> dict:
    """The NGSI-LD simplified form (as the normalizer's `options=keyValues` serves it)."""
    return {name: (attr.get("value", attr.get("object")) if isinstance(attr, dict) and "type" in attr else attr)
            for name, attr in entity.items()}


def twin() -> Twin:
    return Twin.from_entities(ENTITIES, "line1", defect_window_ms=60_000, defect_classes=CLASSES)


def obs(machine: str, attribute: str, value, at: int, unit: str | None = None) -> dict:
    return {"line_id": "line1", "entity_id": f"urn:ngsi-ld:Machine:line1-{machine}", "attribute": attribute,
            "value": value, "unit_code": unit, "observed_at": at}


def test_machines_in_flow_order_with_the_environment_last() -> None:
    t = twin()
    assert [m["id"] for m in t.snapshot()["machines"]] == [
        "mixer", "depositor", "oven", "cooling-conveyor", "detector", "packaging", "environment"]
    assert t.line_name == "Cookie line 1"
    oven = t.snapshot()["machines"][2]
    zone1 = next(r for r in oven["readings"] if r["attribute"] == "zone1_temperature")
    assert zone1["normal"] == [170.0, 195.0] and zone1["unit"] == "CEL" and zone1["status"] == "unknown"


def test_key_values_entities_build_the_same_twin() -> None:
    simple = Twin.from_entities([key_values(e) for e in ENTITIES], "line1", defect_classes=CLASSES)
    assert simple.snapshot()["machines"] == twin().snapshot()["machines"]


def test_readings_against_normal_ranges_and_older_readings_never_win() -> None:
    t = twin()
    assert t.fold("observations", obs("oven", "zone2_temperature", 231.5, 2000, "CEL"))
    assert not t.fold("observations", obs("oven", "zone2_temperature", 190.0, 1000, "CEL"))
    oven = t.snapshot()["machines"][2]
    zone2 = next(r for r in oven["readings"] if r["attribute"] == "zone2_temperature")
    assert zone2["value"] == 231.5 and zone2["status"] == "high"
    t.fold("observations", obs("mixer", "torque", 30.0, 2000))
    mixer = t.snapshot()["machines"][0]
    assert next(r for r in mixer["readings"] if r["attribute"] == "torque")["status"] == "low"
    assert not t.fold("observations", {**obs("oven", "x", 1, 1), "line_id": "line9"}), "another line"


def test_state_and_since_when() -> None:
    t = twin()
    t.fold("observations", obs("cooling-conveyor", "state", "running", 1000))
    t.fold("observations", obs("cooling-conveyor", "state", "running", 3000))
    conveyor = t.snapshot()["machines"][3]
    assert conveyor["state"] == "running" and conveyor["state_since"] == 1000
    t.fold("observations", obs("cooling-conveyor", "state", "stopped", 5000))
    t.fold("observations", obs("cooling-conveyor", "state", "stopped", 7000))
    conveyor = t.snapshot()["machines"][3]
    assert conveyor["state"] == "stopped" and conveyor["state_since"] == 5000
    assert all(r["attribute"] != "state" for r in conveyor["readings"])


def test_alarms_open_and_clear() -> None:
    t = twin()
    alarm = {"line_id": "line1", "entity_id": "urn:ngsi-ld:Machine:line1-oven", "alarm_id": "a1",
             "alarm_type": "OVERTEMP", "severity": "critical", "state": "active", "message": "zone 2 hot",
             "raised_at": 1000, "raise_count": 1}
    t.fold("alarms", alarm)
    assert [a["alarm_id"] for a in t.snapshot()["machines"][2]["alarms"]] == ["a1"]
    t.fold("alarms", {**alarm, "state": "cleared"})
    assert t.snapshot()["machines"][2]["alarms"] == []


def test_defect_rates_by_class_over_the_window() -> None:
    t = twin()

    def inspection(at: int, *classes: str) -> dict:
        return {"line_id": "line1", "station_entity_id": "urn:ngsi-ld:Machine:line1-detector", "captured_at": at,
                "defects": [{"defect_class": c} for c in classes]}

    t.fold("inspections", inspection(0, "burnt"))  # falls out of the 60 s window below
    for i in range(8):
        t.fold("inspections", inspection(100_000 + i))
    t.fold("inspections", inspection(100_010, "burnt", "cracked"))
    t.fold("inspections", inspection(100_020, "burnt"))
    for i in range(5):  # abstentions: not judged, so neither good items nor defects
        t.fold("inspections", {**inspection(100_030 + i), "verdict": "abstained"})
    detector = t.snapshot()["machines"][4]["inspections"]
    assert detector["items"] == 10
    assert detector["defective_rate"] == 0.2
    assert detector["rates"] == {"cracked": 0.1, "deformed": 0.0, "bubbled": 0.0, "burnt": 0.2}


def test_trends_keep_numbers_only() -> None:
    t = twin()
    for i in range(5):
        t.fold("observations", obs("oven", "belt_speed", 3.0 + i / 10, 1000 * i, "2X"))
    t.fold("observations", obs("oven", "state", "running", 9000))
    data = t.trends("oven")
    assert list(data["series"]) == ["belt_speed"]
    assert data["series"]["belt_speed"]["points"][-1] == (4000, 3.4)
    assert t.trends("oven", since_ms=3000)["series"]["belt_speed"]["points"] == [(3000, 3.3), (4000, 3.4)]
    assert t.trends("no-such-machine") is None
