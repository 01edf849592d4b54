"""Property tests of the actuator's safety: whatever sequence of recommendations, approvals, rejections, manual
changes, controller failures and passing time arrives (out-of-range values, NaN, huge steps, bursts, unknown
machines and parameters, duplicated ids, commands), no control API write ever falls outside the policy, and every
refusal carries a reason.

The controller here is an in-memory line that checks each write against the policy, independently of the
actuator's own decision code, at the moment the write arrives. The real controller (the simulator's control API)
is exercised by the integration and end-to-end tests.
"""

from __future__ import annotations

import asyncio

from actuator_fakes import LINE, PLANT, Clock, PolicedLine
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lineguard.avro import AvroSerde
from services.actuator.actions import ActionConflict, Actuator
from services.actuator.policy import load_policy, parse_policy
from services.actuator.settings import POLICY_FILE

POLICY = load_policy(POLICY_FILE, PLANT)
SERDE = AvroSerde()
REFUSALS = ("blocked", "rejected", "expired", "failed")

AUTO_POLICY = parse_policy("""
lines:
  line1:
    machines:
      oven:
        setpoints:
          zone2_setpoint: {mode: auto, min: 160, max: 200, max_step: 10, cooldown_s: 120, max_changes_per_hour: 3}
          zone1_setpoint: {mode: deny}
        commands: {start: approve, stop: approve}
      mixer:
        setpoints:
          speed: {mode: auto, min: 60, max: 80, max_step: 5, cooldown_s: 0, max_changes_per_hour: 2}
""", PLANT)


MACHINES = [m.entity_id for m in LINE.machines.values()] + ["urn:ngsi-ld:Machine:line1-toaster",
                                                             "urn:ngsi-ld:Machine:line2-oven", "not a urn"]
PARAMETERS = sorted({p for m in LINE.machines.values() for p in m.setpoints}) + ["start", "stop", "zone9_setpoint",
                                                                                  "state", ""]
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=300),
    st.sampled_from([150.0, 160.0, 175.0, 176.0, 180.0, 185.0, 190.0, 195.0, 205.0, 210.0, 230.0, 2.9, 3.1, 60.0, 65.0, 75.0, 85.0]),
)
proposal = st.fixed_dictionaries({
    "machine_entity_id": st.sampled_from(MACHINES), "parameter": st.sampled_from(PARAMETERS), "value": values,
    "unit_code": st.sampled_from([None, "CEL", "RPM", "FAH"]), "reason": st.text(max_size=20)})


@st.composite
def plausible(draw, policy) -> dict:
    """A proposal near the current recipe for a setpoint some policy lists, so that some pass and the limits are
    probed from both sides (exactly one step, a hair over it, ...)."""
    machine_id, parameter = draw(st.sampled_from(sorted((r.machine_id, r.parameter) for r in policy.rules.values()
                                                         if not r.command)))
    limits = LINE.machines[machine_id].setpoints[parameter]
    steps = sorted({r.max_step for p in (POLICY, AUTO_POLICY) if (r := p.rule("line1", machine_id, parameter))
                    and not r.command} | {limits.max_step})
    delta = draw(st.sampled_from([-2.0, -1.0, -0.5, 0.5, 1.0, 1.0001])) * draw(st.sampled_from(steps))
    return {"machine_entity_id": LINE.machines[machine_id].entity_id, "parameter": parameter,
            "value": limits.default + delta, "unit_code": limits.unit, "reason": "near the recipe"}




def operations(policy):
    return st.lists(st.one_of(
        st.tuples(st.just("recommend"), st.integers(0, 5), st.lists(st.one_of(proposal, plausible(policy)),
                                                                    max_size=4)),
        st.tuples(st.just("recommend"), st.integers(6, 10**6), st.lists(plausible(policy), min_size=1, max_size=2)),
        st.tuples(st.just("approve"), st.integers(0, 8), st.sampled_from(["alice", "bob"])),
        st.tuples(st.just("approve"), st.just(0), st.just("alice")),
        st.tuples(st.just("reject"), st.integers(0, 8), st.sampled_from(["alice", "bob"])),
        st.tuples(st.just("advance"), st.sampled_from([1.0, 30.0, 119.0, 121.0, 301.0, 901.0, 3601.0])),
        st.tuples(st.just("manual"), st.sampled_from(sorted(POLICY.rules)), st.floats(-10, 10)),
        st.tuples(st.just("fail"), st.lists(st.sampled_from([0, 500, 503, 400, 404, 422]), min_size=1, max_size=3)),
    ), max_size=25)


def run(operations, policy, dry_run: bool = False) -> tuple[PolicedLine, list[dict], Actuator]:
    clock = Clock()
    approved: set[str] = set()
    line = PolicedLine(clock, policy, approved, dry_run=dry_run or policy.dry_run)
    published: list[dict] = []

    async def publish(record: dict) -> None:
        SERDE.encode("actions.v1", record)  # every audit record fits the topic's schema
        published.append(dict(record))

    actuator = Actuator(PLANT, policy, line, publish, dry_run=dry_run, clock=clock)  # type: ignore[arg-type]

    async def scenario() -> None:
        for op in operations:
            kind = op[0]
            if kind == "recommend":
                await actuator.intake({"id": f"rec-{op[1]}", "line_id": "line1", "title": "t", "evidence": [],
                                       "proposed_actions": op[2]})
            elif kind in ("approve", "reject"):
                pending = [a["action_id"] for a in actuator.pending()]
                ids = pending if pending and op[1] % 2 == 0 else sorted(actuator.ledger)
                if not ids:
                    continue
                aid = ids[op[1] % len(ids)]
                try:
                    if kind == "approve":
                        if actuator.ledger[aid]["status"] == "pending_approval":
                            approved.add(aid)
                        await actuator.approve(aid, op[2], "ok", wait_s=60)
                    else:
                        await actuator.reject(aid, op[2], "no")
                except ActionConflict:
                    assert actuator.ledger[aid]["status"] != "pending_approval"
            elif kind == "advance":
                clock.now += op[1]
                await actuator.expire_due()
            elif kind == "manual":  # someone at the HMI moves a setpoint within the plant's limits
                _, machine, parameter = op[1]
                if parameter in ("start", "stop"):
                    continue
                limits = LINE.machines[machine].setpoints[parameter]
                current = line.setpoints[(machine, parameter)]
                line.setpoints[(machine, parameter)] = min(limits.max, max(limits.min, current + op[2]))
            elif kind == "fail":
                line.fail_next = list(op[1])
        await actuator.drain()

    asyncio.run(scenario())
    return line, published, actuator


def check_audit(published: list[dict], actuator: Actuator) -> None:
    for record in published:
        if record["status"] in REFUSALS:
            assert record["reason"] and record["reason"].strip(), record
    # the ledger is the last published record of each action, and no action is left between steps
    last = {r["action_id"]: r for r in published}
    assert last == actuator.ledger
    assert not [a for a in actuator.ledger.values() if a["status"] in ("proposed", "approved", "executing")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations(POLICY))
def test_no_sequence_leads_to_a_write_outside_the_policy(operations) -> None:
    line, published, actuator = run(operations, POLICY)
    event(f"writes: {min(len(line.writes), 2)}")
    assert line.violations == []
    check_audit(published, actuator)
    executed = [a for a in actuator.ledger.values() if a["status"] == "executed"]
    assert len(executed) <= len(line.writes)




@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations(AUTO_POLICY))
def test_auto_mode_writes_stay_inside_steps_cooldowns_and_rates(operations) -> None:
    line, published, actuator = run(operations, AUTO_POLICY)
    event(f"writes: {min(len(line.writes), 2)}")
    assert line.violations == []
    check_audit(published, actuator)


@settings(max_examples=100, deadline=None)
@given(operations(AUTO_POLICY))
def test_dry_run_never_writes(operations) -> None:
    line, published, actuator = run(operations, AUTO_POLICY, dry_run=True)
    assert line.writes == []
    check_audit(published, actuator)
