"""The line's cause and effect: each fault moves the defect it should, and a correction brings it back."""

from __future__ import annotations

import functools

import pytest

from lineguard.plant import default_plant_path, load_plant
from simulator.ground_truth import GroundTruthLog, defect_rates, read_ground_truth
from simulator.model import AlarmTracker, ControlError, CookieLine, defect_probabilities
from simulator.scenarios import load_scenario

PLANT = load_plant(default_plant_path())
LINE = PLANT.lines["line1"]


def make_line(scenario: str, seed: int = 3, truth_path=None) -> CookieLine:
    return CookieLine(PLANT, seed=seed, scenario=load_scenario(scenario, LINE),
                      ground_truth=GroundTruthLog(truth_path))


def defect_rate(sim: CookieLine, defect: str, start_s: float, end_s: float) -> float:
    """Share of cookies leaving the oven in [start_s, end_s) that carry `defect`."""
    cookies = []
    for events in sim.run_until(end_s):
        cookies.extend(c for c in events.exited if c.exited_s is not None and c.exited_s >= start_s)
    assert len(cookies) > 100, "too few cookies to measure a rate"
    return sum(defect in c.defects for c in cookies) / len(cookies)


@functools.cache
def normal_rate(defect: str) -> float:
    return defect_rate(make_line("normal_run"), defect, 900, 1500)


def test_normal_run_has_a_low_background_defect_rate():
    sim = make_line("normal_run")
    sim.run_until(300)
    cookies = [c for e in sim.run_until(1500) for c in e.exited]
    defective = sum(bool(c.defects) for c in cookies) / len(cookies)
    assert 0.0 < defective < 0.06
    assert len(cookies) == pytest.approx(1200 / 60 * 60, rel=0.05)  # 60 cookies a minute


@pytest.mark.parametrize(
    ("scenario", "defect", "machine", "parameter", "corrected"),
    [
        ("oven_zone_overheat", "burnt", "oven", "zone2_setpoint", 150.0),
        ("mixer_torque_loss", "deformed", "mixer", "speed", 85.0),
        ("humidity_rise", "bubbled", "mixer", "water_ratio", 26.0),
    ],
)
def test_fault_raises_its_defect_and_the_expected_action_brings_it_back(scenario, defect, machine, parameter,
                                                                        corrected):
    normal = normal_rate(defect)
    sim = make_line(scenario)
    faulty = defect_rate(sim, defect, 900, 1500)
    assert normal < 0.05
    assert faulty > 0.5 and faulty > 10 * normal
    # The scenario's own expected action is the one that fixes it.
    change = sim.scenario.expected.setpoint_change
    assert (change.machine, change.parameter, change.value) == (machine, parameter, corrected)
    sim.set_setpoint(machine, parameter, corrected, source="test")
    after = defect_rate(sim, defect, 2400, 3000)  # past the thermal lag and one bake
    assert after < 0.15 and after < faulty / 4


def test_thermocouple_failure_changes_the_reading_not_the_product():
    normal, failing = make_line("normal_run"), make_line("thermocouple_failure")
    burnt_normal = defect_rate(normal, "burnt", 900, 1500)
    burnt_failing = defect_rate(failing, "burnt", 900, 1500)
    assert burnt_failing < 0.05 and abs(burnt_failing - burnt_normal) < 0.03

    def reading(sim, attribute):
        return next(r.value for r in sim.readings(["oven"]) if r.attribute == attribute)

    assert reading(failing, "zone2_temperature") - reading(normal, "zone2_temperature") == pytest.approx(40, abs=3)
    assert failing.zone_temps[1] == pytest.approx(normal.zone_temps[1], abs=0.5)  # the real heat is the same
    assert reading(failing, "heater_power") == pytest.approx(reading(normal, "heater_power"), abs=3)


def test_overheat_is_real_heat_with_more_heater_power():
    overheat, normal = make_line("oven_zone_overheat"), make_line("normal_run")
    overheat.run_until(1200)
    normal.run_until(1200)
    assert overheat.zone_temps[1] - normal.zone_temps[1] == pytest.approx(40, abs=2)
    assert overheat.heater_power > normal.heater_power + 12


def test_cooling_fault_cracks_cookies():
    assert defect_rate(make_line("cooling_fault"), "cracked", 900, 1500) > 0.5


def test_stopped_conveyor_silences_the_detector_and_start_restores_it(tmp_path):
    sim = make_line("conveyor_stop", truth_path=tmp_path / "truth.jsonl")
    sim.run_until(1000)
    assert sim.machines["cooling-conveyor"].state == "fault"
    detected = [c for e in sim.run_until(1100) for c in e.detected]
    assert detected == []
    assert sim.truth[("detector", "items_per_minute")] == 0.0
    assert sim.counters["diverted"] > 500
    change = sim.start_machine("cooling-conveyor", reason="test restart")
    assert change["previous_state"] == "fault" and change["state"] == "running"
    detected = [c for e in sim.run_until(1400) for c in e.detected]
    assert len(detected) > 100
    sim.truth_log.close()
    commands = read_ground_truth(tmp_path / "truth.jsonl", "machine_command")
    assert [(c["action"], c["previous_state"], c["state"]) for c in commands] == [
        ("trip", "running", "fault"), ("start", "fault", "running")]


def test_zone_temperature_follows_setpoint_with_thermal_lag():
    sim = make_line("normal_run")
    sim.run_until(60)
    sim.set_setpoint("oven", "zone1_setpoint", 165.0)
    sim.run_until(150)  # one time constant (90 s) later: about 63% of the way
    moved = 180.0 - sim.zone_temps[0]
    assert 15.0 * 0.5 < moved < 15.0 * 0.75
    sim.run_until(700)
    assert sim.zone_temps[0] == pytest.approx(165.0, abs=0.5)


def test_stopped_machine_stops_production():
    sim = make_line("normal_run")
    sim.run_until(120)
    sim.stop_machine("depositor")
    before = sim.counters["deposited"]
    sim.run_until(300)
    assert sim.counters["deposited"] == before
    assert sim.truth[("depositor", "deposit_rate")] == 0.0
    sim.start_machine("depositor")
    sim.run_until(420)
    assert sim.counters["deposited"] - before == pytest.approx(120, abs=2)


def test_readings_drift_and_carry_noise():
    sim = make_line("normal_run")
    values = []
    for _ in range(200):
        sim.step()
        values.append(next(r.value for r in sim.readings(["mixer"]) if r.attribute == "torque"))
    steps = [abs(b - a) for a, b in zip(values, values[1:], strict=False)]
    assert 0.2 < sum(steps) / len(steps) < 1.5  # tick-to-tick noise of about 0.4 Nm
    assert 44 < sum(values) / len(values) < 52
    ambient = [sim.ambient]
    for _ in range(5):
        sim.run_until(sim.now_s + 600)
        ambient.append(sim.ambient)
    assert max(ambient) - min(ambient) > 0.1  # the hall drifts


def test_same_seed_same_run_different_seed_different_run():
    def labels(seed):
        sim = make_line("oven_zone_overheat", seed=seed)
        return [(c.item_id[-7:], tuple(sorted(c.defects))) for e in sim.run_until(900) for c in e.exited]

    assert labels(5) == labels(5)
    assert labels(5) != labels(6)


def test_setpoint_outside_limits_is_refused_with_a_reason():
    sim = make_line("normal_run")
    with pytest.raises(ControlError) as refused:
        sim.set_setpoint("oven", "zone2_setpoint", 400.0)
    assert refused.value.status == 422 and "outside the limits" in refused.value.reason
    with pytest.raises(ControlError) as unknown:
        sim.set_setpoint("oven", "zone9_setpoint", 180.0)
    assert unknown.value.status == 404
    assert sim.machines["oven"].setpoints["zone2_setpoint"] == 190.0


def test_defect_probabilities_rise_with_their_causes():
    base = defect_probabilities(0.0, 48.0, 28.0, 19.0)
    assert all(p < 0.02 for p in base.values())
    assert defect_probabilities(13.3, 48.0, 28.0, 19.0)["burnt"] > 0.9
    assert defect_probabilities(0.0, 36.0, 28.0, 19.0)["deformed"] > 0.6
    assert defect_probabilities(0.0, 48.0, 30.5, 19.0)["bubbled"] > 0.6
    assert defect_probabilities(0.0, 48.0, 28.0, 5.0)["cracked"] > 0.7


def test_normal_run_raises_no_alarm_and_each_fault_raises_its_own():
    def alarms(scenario):
        sim = make_line(scenario)
        tracker = AlarmTracker(sim.line)
        raised = set()
        for _ in range(900):
            sim.step(2.0)
            raised |= {(a.machine, a.alarm) for a in tracker.update(sim.readings()) if a.state == "raise"}
        return raised

    assert alarms("normal_run") == set()
    assert ("oven", "zone2_temperature_high") in alarms("oven_zone_overheat")
    assert ("oven", "zone2_temperature_high") in alarms("thermocouple_failure")
    assert ("mixer", "torque_low") in alarms("mixer_torque_loss")
    assert ("environment", "humidity_high") in alarms("humidity_rise")
    assert {("cooling-conveyor", "stopped"), ("detector", "items_per_minute_low")} <= alarms("conveyor_stop")
    assert ("cooling-conveyor", "air_temperature_low") in alarms("cooling_fault")


def test_ground_truth_summarises_defect_rates_by_window(tmp_path):
    sim = make_line("oven_zone_overheat", truth_path=tmp_path / "truth.jsonl")
    sim.run_until(1200)
    sim.truth_log.close()
    before = defect_rates(tmp_path / "truth.jsonl", 0, 300)
    during = defect_rates(tmp_path / "truth.jsonl", 800, 1200)
    assert (before["cookies"], during["cookies"]) == (300, 400)  # one cookie a second
    assert before["rates"].get("burnt", 0.0) < 0.05 < 0.8 < during["rates"]["burnt"] <= during["defective"]
    assert during["diverted"] == 0
