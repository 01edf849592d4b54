"""The actuation policy file: the shipped example loads, and every kind of mistake is refused naming file, line and
field; the decision refuses what the policy does not allow, each time with a reason."""

from __future__ import annotations

import math

import pytest

from lineguard.plant import default_plant_path, load_plant
from services.actuator.decision import History, Live, Target, check, static_check
from services.actuator.policy import PolicyError, load_policy, parse_policy
from services.actuator.settings import POLICY_FILE

PLANT = load_plant(default_plant_path())
POLICY = load_policy(POLICY_FILE, PLANT)

BASE = """\
version: 1
lines:
  line1:
    machines:
      oven:
        setpoints:
          zone2_setpoint: {mode: approve, min: 150, max: 210, max_step: 15}
"""


def test_the_shipped_policy_loads_and_narrows_the_plant_limits() -> None:
    assert not POLICY.dry_run
    zone2 = POLICY.rule("line1", "oven", "zone2_setpoint")
    assert zone2 is not None and zone2.mode == "approve" and zone2.max_step == 15 and zone2.unit == "CEL"
    assert POLICY.rule("line1", "oven", "start").mode == "approve"
    assert POLICY.rule("line1", "cooling-conveyor", "speed").mode == "deny"
    for rule in POLICY.rules.values():
        if rule.command:
            assert rule.mode in ("approve", "deny")
            continue
        limits = PLANT.machine(rule.line_id, rule.machine_id).setpoints[rule.parameter]
        assert limits.min <= rule.min <= rule.max <= limits.max and 0 < rule.max_step <= limits.max_step


def test_a_listed_parameter_without_a_mode_defaults_to_approve_and_plant_limits() -> None:
    policy = parse_policy(BASE.replace("{mode: approve, min: 150, max: 210, max_step: 15}", "{}"), PLANT)
    rule = policy.rule("line1", "oven", "zone2_setpoint")
    assert (rule.mode, rule.min, rule.max, rule.max_step) == ("approve", 150.0, 230.0, 15.0)


@pytest.mark.parametrize(("edit", "message"), [
    (("min: 150", "min: 100"), "<test>:7: lines.line1.machines.oven.setpoints.zone2_setpoint.min: 100.0 is below "
                               "the plant model's limit 150.0"),
    (("max: 210", "max: 260"), "setpoints.zone2_setpoint.max: 260.0 is above the plant model's limit 230.0"),
    (("max_step: 15", "max_step: 40"), "setpoints.zone2_setpoint.max_step: expected > 0 and at most"),
    (("mode: approve", "mode: maybe"), "setpoints.zone2_setpoint.mode: expected one of auto, approve, deny"),
    (("mode: approve", "mode: approve, cooldwn_s: 5"), "zone2_setpoint.cooldwn_s: unknown field"),
    (("zone2_setpoint:", "zone9_setpoint:"), "machine oven has no setpoint 'zone9_setpoint'"),
    (("oven:", "toaster:"), "<test>:5: lines.line1.machines.toaster: no such machine on line line1"),
    (("line1:", "line7:"), "lines.line7: no such line in the plant model"),
    (("min: 150, max: 210", "min: 200, max: 160"), "min 200.0 is greater than max 160.0"),
    (("max_step: 15}", "max_step: 15, max_changes_per_hour: 0}"), "max_changes_per_hour: expected an integer >= 1"),
    (("max_step: 15}", "max_step: 15, cooldown_s: -1}"), "cooldown_s: expected >= 0"),
    (("version: 1", "version: 2"), "version: only version 1 is known"),
    (("max: 210", "max: .nan"), "max: expected a finite number"),
])
def test_policy_mistakes_name_file_line_and_field(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(BASE.replace(*edit), PLANT, source="<test>")
    assert message in str(caught.value)


def test_start_and_stop_are_approve_at_most() -> None:
    text = BASE + "        commands:\n          stop: auto\n"
    with pytest.raises(PolicyError, match=r"<test>:\d+: .*commands.stop.mode: start and stop are 'approve' at most"):
        parse_policy(text, PLANT, source="<test>")
    with pytest.raises(PolicyError, match="commands.reboot: unknown command"):
        parse_policy(BASE + "        commands:\n          reboot: approve\n", PLANT, source="<test>")
    # an `auto` default never makes a command automatic
    policy = parse_policy(BASE.replace("version: 1", "version: 1\ndefault_mode: auto")
                          + "        commands:\n          start: {}\n", PLANT)
    assert policy.rule("line1", "oven", "start").mode == "approve"


def test_an_unreadable_policy_names_the_file(tmp_path) -> None:
    with pytest.raises(PolicyError, match="cannot read the actuation policy"):
        load_policy(tmp_path / "missing.yaml", PLANT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lines: [unclosed")
    with pytest.raises(PolicyError, match="bad.yaml: not valid YAML"):
        load_policy(bad, PLANT)


def zone2(value: float, unit: str | None = "CEL") -> Target:
    return Target("line1", "oven", "zone2_setpoint", value, unit)


RUNNING_190 = Live("running", 190.0)


def test_a_step_within_the_policy_waits_for_approval() -> None:
    result = check(POLICY, zone2(175.0), RUNNING_190, History(), now_s=10_000)
    assert result.allowed and result.mode == "approve" and result.step == -15.0 and result.reasons == ()


@pytest.mark.parametrize(("target", "live", "history", "why"), [
    (zone2(170.0), RUNNING_190, History(), "a step of 20 (from 190 to 170) exceeds the policy's largest step 15"),
    (zone2(140.0), Live("running", 150.0), History(), "outside the policy's limits [150, 210] CEL"),
    (zone2(math.nan), RUNNING_190, History(), "value nan is not a finite number"),
    (zone2(math.inf), RUNNING_190, History(), "value inf is not a finite number"),
    (zone2(190.0), RUNNING_190, History(), "zone2_setpoint is already 190: nothing to change"),
    (zone2(175.0, "FAH"), RUNNING_190, History(), "unit FAH differs from the setpoint's unit CEL"),
    (zone2(175.0), RUNNING_190, History((9_950.0,)), "cooldown: the last change was 50 s ago"),
    (zone2(175.0), RUNNING_190, History(tuple(7_000.0 + 300 * i for i in range(6))),
     "6 changes in the last hour; the policy allows 6"),
    (zone2(175.0), RUNNING_190, History(in_flight=1), "another change of oven.zone2_setpoint is in flight"),
    (zone2(175.0), Live("running", None), History(), "the control API reports no current value"),
    (Target("line1", "oven", "start", 0.0), Live("running", None), History(), "the machine is already running"),
])
def test_refusals_carry_their_reason(target, live, history, why) -> None:
    result = check(POLICY, target, live, history, now_s=10_000)
    assert not result.allowed
    assert why in result.reason, result.reason


@pytest.mark.parametrize(("target", "why"), [
    (Target("line1", None, "zone2_setpoint", 175.0), "unknown machine: not in the plant model"),
    (Target("line1", "oven", "zone7_setpoint", 175.0), "oven.zone7_setpoint on line1 is not in the actuation policy"),
    (Target("line1", "detector", "items_per_minute", 1.0), "is not in the actuation policy"),
    (Target("line1", "cooling-conveyor", "speed", 3.0), "the policy denies changes of cooling-conveyor.speed"),
])
def test_unknown_and_denied_are_refused_before_any_live_read(target, why) -> None:
    result = static_check(POLICY, target)
    assert not result.allowed and result.mode == "deny" and why in result.reason
