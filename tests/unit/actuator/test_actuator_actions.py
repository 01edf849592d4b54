"""An action's life, step by step, against the policed in-memory line: approve, reject, expire, auto, replay,
restart between steps, controller failures; every step on the audit trail before the next."""

from __future__ import annotations

import asyncio
import json

import pytest
from actuator_fakes import PLANT, Clock, PolicedLine

from services.actuator.actions import ActionConflict, Actuator, action_id, public_view
from services.actuator.control import ControlApiError
from services.actuator.policy import load_policy, parse_policy
from services.actuator.settings import POLICY_FILE

POLICY = load_policy(POLICY_FILE, PLANT)
OVEN = "urn:ngsi-ld:Machine:line1-oven"
MIXER = "urn:ngsi-ld:Machine:line1-mixer"


def recommendation(rec_id: str = "rec-1", *proposals: dict) -> dict:
    return {"id": rec_id, "line_id": "line1", "title": "Oven zone 2 runs hot",
            "evidence": [{"description": "zone2_temperature 229.8 C over 205 C"}],
            "proposed_actions": list(proposals) or [
                {"machine_entity_id": OVEN, "parameter": "zone2_setpoint", "value": 175.0, "unit_code": "CEL",
                 "reason": "zone 2 runs 40 C over its setpoint"}]}


class Rig:
    def __init__(self, policy=POLICY, dry_run: bool = False) -> None:
        self.clock = Clock()
        self.approved: set[str] = set()
        self.line = PolicedLine(self.clock, policy, self.approved, dry_run=dry_run)
        self.published: list[dict] = []
        self.actuator = self.new_actuator(policy, dry_run)

    def new_actuator(self, policy=POLICY, dry_run: bool = False) -> Actuator:
        async def publish(record: dict) -> None:
            self.published.append(dict(record))

        return Actuator(PLANT, policy, self.line, publish, dry_run=dry_run, clock=self.clock)  # type: ignore

    def statuses(self, aid: str) -> list[str]:
        return [r["status"] for r in self.published if r["action_id"] == aid]

    async def approve(self, aid: str, who: str = "alice", comment: str = "go") -> dict:
        self.approved.add(aid)
        return await self.actuator.approve(aid, who, comment, wait_s=30)


def test_approve_applies_reads_back_and_audits_every_step() -> None:
    async def go() -> None:
        rig = Rig()
        (aid,) = await rig.actuator.intake(recommendation())
        assert aid == action_id("rec-1", 0) == "rec-1-a0"
        pending = rig.actuator.ledger[aid]
        assert pending["status"] == "pending_approval" and pending["previous_value"] == 190.0
        assert pending["expires_at"] == int((rig.clock.now + 900) * 1000)
        view = public_view(pending)
        assert view["current_value"] == 190.0 and view["proposed_value"] == 175.0 and view["machine"] == "oven"
        assert view["policy_check"]["allowed"] and view["policy_check"]["rule"]["max_step"] == 15
        assert view["evidence"] == ["zone2_temperature 229.8 C over 205 C"]
        assert rig.line.writes == []  # nothing happens before an operator approves
        done = await rig.approve(aid, "alice via console", "lower it")
        assert done["status"] == "executed" and done["previous_value"] == 190.0 and done["readback_value"] == 175.0
        assert done["actor"] == "alice via console" and done["comment"] == "lower it"
        assert rig.statuses(aid) == ["proposed", "pending_approval", "approved", "executing", "executed"]
        assert rig.line.setpoints[("oven", "zone2_setpoint")] == 175.0 and len(rig.line.writes) == 1
        with pytest.raises(ActionConflict, match="already decided"):
            await rig.actuator.approve(aid, "bob", None)
        with pytest.raises(KeyError):
            await rig.actuator.reject("rec-404-a0", "bob", None)

    asyncio.run(go())


def test_reject_and_expiry_end_without_a_write() -> None:
    async def go() -> None:
        rig = Rig()
        (first,) = await rig.actuator.intake(recommendation("rec-1"))
        rejected = await rig.actuator.reject(first, "bob", "not now")
        assert rejected["status"] == "rejected" and rejected["reason"] == "rejected by bob: not now"
        rig.clock.now += 200  # past the cooldown is irrelevant: nothing was executed
        (second,) = await rig.actuator.intake(recommendation("rec-2"))
        rig.clock.now += 899
        assert await rig.actuator.expire_due() == 0
        rig.clock.now += 1
        assert await rig.actuator.expire_due() == 1
        expired = rig.actuator.ledger[second]
        assert expired["status"] == "expired" and "no operator decided within 900 s" in expired["reason"]
        with pytest.raises(ActionConflict, match="has expired"):
            await rig.approve(second)
        (third,) = await rig.actuator.intake(recommendation("rec-3"))
        rig.clock.now += 901  # expired by time, before the ticker noticed: approving expires it, 409
        with pytest.raises(ActionConflict, match="has expired"):
            await rig.approve(third)
        assert rig.actuator.ledger[third]["status"] == "expired"
        assert rig.line.writes == []

    asyncio.run(go())


def test_approving_rechecks_against_the_live_state() -> None:
    async def go() -> None:
        rig = Rig()
        (aid,) = await rig.actuator.intake(recommendation())
        rig.line.setpoints[("oven", "zone2_setpoint")] = 195.0  # someone moved it at the HMI meanwhile
        done = await rig.approve(aid)
        assert done["status"] == "blocked" and "a step of 20 (from 195 to 175)" in done["reason"]
        assert rig.line.writes == []

    asyncio.run(go())


def test_replayed_and_duplicated_recommendations_change_nothing_twice() -> None:
    async def go() -> None:
        rig = Rig()
        (aid,) = await rig.actuator.intake(recommendation())
        await rig.approve(aid)
        count = len(rig.published)
        assert await rig.actuator.intake(recommendation()) == []  # the same recommendation again
        # a restarted actuator rebuilds its ledger from the audit trail and skips it too
        restarted = rig.new_actuator()
        restarted.restore(rig.published)
        assert await restarted.intake(recommendation()) == []
        assert len(rig.published) == count and len(rig.line.writes) == 1

    asyncio.run(go())


def test_a_restart_resumes_executing_with_the_same_key() -> None:
    async def go() -> None:
        rig = Rig()
        (aid,) = await rig.actuator.intake(recommendation())
        rig.approved.add(aid)
        trail = list(rig.published)
        trail.append({**trail[-1], "status": "approved", "actor": "alice"})
        trail.append({**trail[-1], "status": "executing"})
        rig.line.setpoints[("oven", "zone2_setpoint")] = 175.0  # the call went through, then the process died
        rig.line.keys.add(aid)
        restarted = rig.new_actuator()
        restarted.restore(trail)
        assert restarted.unfinished() == [aid]
        calls = []

        async def replayed(line_id, machine_id, parameter, value, key, reason, requested_by):
            calls.append(key)  # what the controller does with a repeated Idempotency-Key: answer, change nothing
            return {"previous": 190.0, "value": value, "replayed": True}

        rig.line.set_setpoint = replayed  # type: ignore[method-assign]
        done = await restarted.process(aid)
        assert calls == [aid]
        assert done["status"] == "executed" and done["previous_value"] == 190.0 and done["readback_value"] == 175.0

    asyncio.run(go())


def test_controller_failures_end_failed_with_the_reason() -> None:
    async def go() -> None:
        rig = Rig()
        rig.line.fail_next = [503]
        (aid,) = await rig.actuator.intake(recommendation())
        failed = rig.actuator.ledger[aid]
        assert failed["status"] == "failed" and "reading the live state failed: HTTP 503" in failed["reason"]
        (aid2,) = await rig.actuator.intake(recommendation("rec-2"))
        rig.approved.add(aid2)

        async def refuse(*args, **kwargs):
            raise ControlApiError("POST .../zone2_setpoint: HTTP 422: outside limits", 422)

        rig.line.set_setpoint = refuse  # type: ignore[method-assign]
        done = await rig.actuator.approve(aid2, "alice", None, wait_s=30)
        assert done["status"] == "failed" and "HTTP 422" in done["error"] and done["attempts"] == 1
        assert rig.statuses(aid2)[-3:] == ["approved", "executing", "failed"]

    asyncio.run(go())


def test_a_change_that_does_not_take_fails_on_read_back() -> None:
    async def go() -> None:
        rig = Rig()
        (aid,) = await rig.actuator.intake(recommendation())

        async def ignored(line_id, machine_id, parameter, value, key, reason, requested_by):
            return {"previous": 190.0, "value": value}  # says yes, changes nothing

        rig.line.set_setpoint = ignored  # type: ignore[method-assign]
        done = await rig.approve(aid)
        assert done["status"] == "failed" and "read-back shows 190, not 175" in done["reason"]
        assert done["readback_value"] == 190.0

    asyncio.run(go())


def test_auto_mode_executes_at_once_and_dry_run_never_writes() -> None:
    policy = parse_policy("lines:\n  line1:\n    machines:\n      mixer:\n        setpoints:\n"
                          "          speed: {mode: auto, max_step: 5}\n", PLANT)
    speed_up = {"machine_entity_id": MIXER, "parameter": "speed", "value": 75.0, "reason": "torque low"}

    async def go() -> None:
        rig = Rig(policy)
        (aid,) = await rig.actuator.intake(recommendation("rec-1", speed_up))
        assert rig.statuses(aid) == ["proposed", "executing", "executed"]
        assert rig.line.setpoints[("mixer", "speed")] == 75.0
        dry = Rig(policy, dry_run=True)
        (aid,) = await dry.actuator.intake(recommendation("rec-1", speed_up))
        record = dry.actuator.ledger[aid]
        assert record["status"] == "blocked" and record["dry_run"] and "dry run" in record["reason"]
        assert dry.line.writes == []

    asyncio.run(go())


def test_a_burst_of_proposals_for_one_setpoint_executes_one() -> None:
    policy = parse_policy("lines:\n  line1:\n    machines:\n      mixer:\n        setpoints:\n"
                          "          speed: {mode: auto, max_step: 5, cooldown_s: 60}\n", PLANT)

    async def go() -> None:
        rig = Rig(policy)
        burst = [{"machine_entity_id": MIXER, "parameter": "speed", "value": 70.0 + d, "reason": "x"}
                 for d in (5, 5, 4, -5, 3)]
        await asyncio.gather(*(rig.actuator.intake(recommendation(f"rec-{i}", p)) for i, p in enumerate(burst)))
        executed = [a for a in rig.actuator.ledger.values() if a["status"] == "executed"]
        blocked = [a for a in rig.actuator.ledger.values() if a["status"] == "blocked"]
        assert len(executed) == 1 and len(blocked) == 4 and len(rig.line.writes) == 1
        assert all("cooldown" in a["reason"] or "nothing to change" in a["reason"] for a in blocked)
        assert json.loads(blocked[0]["policy_check"])["allowed"] is False

    asyncio.run(go())


def test_unknown_machines_never_reach_the_controller() -> None:
    async def go() -> None:
        rig = Rig()
        ids = await rig.actuator.intake(recommendation("rec-1", *[
            {"machine_entity_id": urn, "parameter": "zone2_setpoint", "value": 175.0, "reason": "x"}
            for urn in ("urn:ngsi-ld:Machine:line1-toaster", "urn:ngsi-ld:Machine:line2-oven")]))
        reasons = [rig.actuator.ledger[a]["reason"] for a in ids]
        assert all("unknown machine" in r for r in reasons), reasons
        assert rig.line.writes == []

    asyncio.run(go())
