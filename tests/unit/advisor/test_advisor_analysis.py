"""The deterministic analysis against windows recorded from every simulator scenario (fixtures/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lineguard.plant import default_plant_path, load_plant
from services.advisor.analysis import Analyzer
from services.advisor.window import LineHistory, LineWindow

FIXTURES = Path(__file__).parent / "fixtures"
PLANT = load_plant(default_plant_path())
MACHINE = "urn:ngsi-ld:Machine:line1-{}"


def load(name: str) -> tuple[LineWindow, LineHistory]:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    return LineWindow.from_dict(doc["window"]), LineHistory.from_dict(doc["history"])


def analyse(name: str):
    window, history = load(name)
    return Analyzer(PLANT).analyse(window, history)


# fixture -> (category, root-cause machine, (parameter, direction) or None, must-have finding)
EXPECTED = {
    "oven_zone_overheat_300": ("process_deviation", "oven", ("zone2_setpoint", "decrease"),
                               "range:oven.zone2_temperature:high"),
    "oven_zone_overheat_900": ("process_deviation", "oven", ("zone2_setpoint", "decrease"),
                               "defect_rate:detector:burnt"),
    "thermocouple_failure_300": ("sensor_fault", "oven", None, "range:oven.zone2_temperature:high"),
    "thermocouple_failure_900": ("sensor_fault", "oven", None, "setpoint:oven.zone2_temperature:high"),
    "mixer_torque_loss_300": ("equipment_fault", "mixer", ("speed", "increase"), "range:mixer.torque:low"),
    "mixer_torque_loss_900": ("equipment_fault", "mixer", ("speed", "increase"), "defect_rate:detector:deformed"),
    "humidity_rise_900": ("environment", "environment", ("water_ratio", "decrease"),
                          "defect_rate:detector:bubbled"),
    "conveyor_stop_600": ("equipment_fault", "cooling-conveyor", None, "silence:detector:inspections"),
    "cooling_fault_900": ("equipment_fault", "cooling-conveyor", None, "defect_rate:detector:cracked"),
}


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_advisor_scenario_window_root_cause_and_action(fixture: str) -> None:
    category, machine, action, finding_id = EXPECTED[fixture]
    result = analyse(fixture)
    assert result.category == category
    assert result.root_cause_machine == machine
    assert result.root_cause_entity == MACHINE.format(machine)
    assert finding_id in result.finding_ids
    assert all(i in result.finding_ids for i in result.cited)
    if action is None:
        assert result.actions == []
    else:
        assert [(a.parameter, a.direction) for a in result.actions] == [action]
        for proposed in result.actions:
            target = PLANT.machine("line1", proposed.machine_id)
            assert target is not None
            assert target.setpoints[proposed.parameter].check(proposed.value, proposed.current) is None


def test_advisor_normal_run_has_no_findings_and_no_action() -> None:
    result = analyse("normal_run_900")
    assert result.category == "none"
    assert result.severity == "info"
    assert result.findings == []
    assert result.actions == [] and result.root_cause_entity is None


def test_advisor_overheat_action_is_one_allowed_step_towards_the_offset() -> None:
    result = analyse("oven_zone_overheat_900")
    (action,) = result.actions
    # zone 2 runs ~40 C over 190; the target is 150, the plant allows 15 C per step
    assert action.current == 190.0 and action.value == 175.0
    assert action.machine_entity_id == MACHINE.format("oven")
    setpoint = result.finding("setpoint:oven.zone2_temperature:high")
    assert setpoint is not None and 35 < setpoint.numbers["offset"] < 45
    assert result.severity == "critical"


def test_advisor_overheat_and_thermocouple_differ_only_by_corroboration() -> None:
    """The same zone reading: heater power up means real heat; heater power normal means the sensor lies."""
    overheat, _ = load("oven_zone_overheat_300")
    sensor, _ = load("thermocouple_failure_300")
    zone_hot = overheat.attribute(MACHINE.format("oven"), "zone2_temperature")
    zone_lie = sensor.attribute(MACHINE.format("oven"), "zone2_temperature")
    assert zone_hot is not None and zone_lie is not None and zone_hot.recent > 205 and zone_lie.recent > 205
    power = sensor.attribute(MACHINE.format("oven"), "heater_power")
    assert power is not None
    power.recent = 75.0  # pretend the heater pulled hard: now the heat is real
    assert Analyzer(PLANT).analyse(sensor).category == "process_deviation"


def test_advisor_setpoint_override_moves_the_action_from_the_current_value() -> None:
    window, history = load("oven_zone_overheat_900")
    result = Analyzer(PLANT).analyse(window, history, setpoints={("oven", "zone2_setpoint"): 160.0})
    (action,) = result.actions
    assert action.current == 160.0 and action.value == 150.0  # limited by the setpoint minimum 150


def test_advisor_findings_carry_numbers_and_evidence() -> None:
    result = analyse("mixer_torque_loss_900")
    torque = result.finding("range:mixer.torque:low")
    assert torque is not None
    assert torque.value is not None and 33 < torque.value < 38
    assert torque.unit_code == "NU" and torque.numbers["limit"] == 38.0
    evidence = torque.evidence()
    assert evidence["finding_id"] == torque.id and evidence["attribute"] == "torque"
    deformed = result.finding("defect_rate:detector:deformed")
    assert deformed is not None and deformed.numbers["rate"] > 0.3


def test_advisor_conveyor_stop_explains_the_silent_detector() -> None:
    result = analyse("conveyor_stop_600")
    assert result.severity == "critical"
    assert "state:cooling-conveyor.state:fault" in result.cited
    assert "silence:detector:inspections" in result.cited  # downstream symptom explained by the root cause
    assert any("start" in step for step in result.steps)


def test_advisor_candidates_walk_upstream_from_the_symptom() -> None:
    result = analyse("oven_zone_overheat_900")
    assert result.candidates[0].machine_id == "oven"
    # packaging's rejects and weight are symptoms downstream, never candidates
    assert all(c.machine_id != "packaging" for c in result.candidates)
    assert "range:packaging.rejects:high" in result.finding_ids


def test_advisor_unknown_line_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="unknown line"):
        Analyzer(PLANT).analyse(LineWindow("line9", 0, 300_000))


def test_advisor_silence_after_history() -> None:
    window, history = load("normal_run_900")
    quiet = LineWindow("line1", window.end_ms, window.end_ms + 300_000)
    history.update(window)
    result = Analyzer(PLANT).analyse(quiet, history)
    ids = result.finding_ids
    assert "silence:oven:readings" in ids and "silence:detector:inspections" in ids
    assert result.category != "none"


def test_advisor_actions_start_from_the_setpoint_the_machine_reports() -> None:
    window, history = load("oven_zone_overheat_900")
    # the operator already lowered zone 2 once; the oven reports its setpoint as a derived data point
    for i, at in enumerate((window.start_ms + 1000, window.end_ms - 1000)):
        window.add("observations", {"id": f"sp{i}", "entity_id": MACHINE.format("oven"), "attribute": "zone2_setpoint",
                                    "value": 175.0, "unit_code": "CEL", "observed_at": at})
    result = Analyzer(PLANT).analyse(window, history)
    (action,) = result.actions
    assert (action.current, action.value) == (175.0, 160.0)
    assert "range:oven.zone2_setpoint:high" not in result.finding_ids  # setpoint values are not judged


def test_advisor_any_machine_reporting_fault_state_is_a_finding() -> None:
    window, history = load("normal_run_900")
    window.add("observations", {"id": "st1", "entity_id": MACHINE.format("mixer"), "attribute": "state",
                                "value": "fault", "observed_at": window.end_ms - 1000})
    result = Analyzer(PLANT).analyse(window, history)
    assert "state:mixer.state:fault" in result.finding_ids
    assert result.root_cause_machine == "mixer" and result.category == "equipment_fault"
