import pytest

from lineguard.plant import PlantModelError, default_plant_path, entity_id, load_plant, parse_plant


@pytest.fixture(scope="module")
def plant():
    return load_plant(default_plant_path())


def test_cookie_line_structure(plant):
    line = plant.lines["line1"]
    assert list(line.machines) == ["mixer", "depositor", "oven", "cooling-conveyor", "detector", "packaging",
                                   "environment"]
    oven = line.machines["oven"]
    assert oven.sensor("zone1_temperature").unit == "CEL"
    assert oven.sensor("zone1_temperature").setpoint == "zone1_setpoint"
    assert plant.sensor_for("line1-mixer", "torque").attribute == "torque"
    assert plant.sensor_for("a84041000181c061", "humidity").machine_id == "environment"
    assert plant.sensor_for("line1-mixer", "nonexistent") is None


def test_detector_upstream_reaches_oven_and_mixer_nearest_first(plant):
    graph = plant.graph()
    upstream = graph.upstream(entity_id("Machine", "line1", "detector"))
    assert upstream[0] == "urn:ngsi-ld:Machine:line1-cooling-conveyor"
    assert "urn:ngsi-ld:Machine:line1-oven" in upstream
    assert "urn:ngsi-ld:Machine:line1-mixer" in upstream
    assert upstream.index("urn:ngsi-ld:Machine:line1-oven") < upstream.index("urn:ngsi-ld:Machine:line1-mixer")
    assert graph.downstream(entity_id("Machine", "line1", "mixer"))[-1] == "urn:ngsi-ld:Machine:line1-packaging"


def test_jsonld_export_has_context_and_relationships(plant):
    doc = plant.graph().jsonld()
    assert doc["@context"].startswith("https://uri.etsi.org/ngsi-ld/")
    by_id = {e["id"]: e for e in doc["@graph"]}
    oven = by_id["urn:ngsi-ld:Machine:line1-oven"]
    assert oven["feeds"] == {"type": "Relationship", "object": "urn:ngsi-ld:Machine:line1-cooling-conveyor"}
    assert oven["partOf"]["object"] == "urn:ngsi-ld:Line:line1"
    assert oven["setpointLimits"]["value"]["zone1_setpoint"]["max"] == 220.0
    sensor = by_id["urn:ngsi-ld:Sensor:line1-oven-zone1_temperature"]
    assert sensor["unitCode"]["value"] == "CEL"


def test_setpoint_limits_and_step(plant):
    zone = plant.machine("line1", "oven").setpoints["zone1_setpoint"]
    assert zone.check(200.0, current=190.0) is None
    assert "outside the limits" in zone.check(260.0)
    assert "largest allowed step" in zone.check(215.0, current=180.0)


GOOD = """
site: {id: s1}
lines:
  - id: l1
    machines:
      - id: a
        type: Mixer
        feeds: [b]
      - id: b
        type: Oven
"""


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD.replace("feeds: [b]", "feeds: [zz]"), r"plant\.yaml:6: lines\[0\]\.machines\[0\]\.feeds: unknown machine 'zz'"),
    (GOOD.replace("type: Oven", "name: no type"), r"plant\.yaml:9: lines\[0\]\.machines\[1\]\.type: is required"),
    (GOOD.replace("site: {id: s1}", "site: {id: 5}"), r"site\.id: expected str, got 5"),
    ("site: {id: s1}\nlines: []\n", "at least one line"),
    ("site: [unclosed", "not valid YAML"),
])
def test_validation_names_line_and_field(text, expected):
    with pytest.raises(PlantModelError, match=expected):
        parse_plant(text, source="plant.yaml")


def test_setpoint_default_outside_limits_is_rejected():
    text = GOOD + "        setpoints:\n          - {parameter: t, min: 1, max: 2, default: 5, max_step: 1}\n"
    with pytest.raises(PlantModelError, match=r"setpoints\[0\]\.default: default 5.0 is outside"):
        parse_plant(text, source="plant.yaml")


def test_every_machine_also_reports_its_state_and_setpoint_values(plant):
    oven = plant.machine("line1", "oven")
    # Setpoint values, named after the parameter, or <parameter>_setpoint where a sensor has the name already.
    assert plant.sensor_for("line1-oven", "zone1_setpoint").unit == "CEL"
    belt = plant.sensor_for("line1-oven", "belt_speed_setpoint")
    assert belt.normal.min == oven.setpoints["belt_speed"].min
    state = plant.sensor_for("line1-oven", "state")
    assert state.kind == "state" and "stopped" in state.states
    assert plant.sensor_for("line1-mixer", "state") is not None
    # Derived sensors do not change what a machine declares (the simulator reads only those).
    assert all(s.attribute != "zone1_setpoint" for s in oven.sensors)
    graph_ids = {e["id"] for e in plant.graph().entities()}
    assert "urn:ngsi-ld:Sensor:line1-oven-zone1_setpoint" in graph_ids
