"""Actions: from a proposed setpoint change to its fate, every step recorded on actions.v1 before the next.

    proposed -> blocked                                      (the policy refused; the reason says why)
             -> failed                                       (the live state could not be read)
             -> pending_approval -> rejected | expired
                                 -> approved -> blocked | executing ...
             -> executing -> executed | failed               (mode auto)

An action's id is `<recommendation id>-a<index>` (the index of the proposal in `proposed_actions`), so a replayed
or duplicated recommendation maps onto the same actions and is skipped; the id is also the control API's
`Idempotency-Key`. `executing` is acknowledged by Kafka before the control API is called, and on start an action
found `executing` is called again with the same key (the controller answers a repeat without changing anything),
then read back: a crash between the call and its audit record never changes a setpoint twice.

The ledger is the latest record of every action (the compacted actions.v1), rebuilt at start. All changes of one
machine parameter run under one lock, so the policy's step, cooldown and rate checks see every earlier change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from lineguard import telemetry
from lineguard.logs import event, get_logger
from lineguard.plant import PlantModel
from services.actuator.control import ControlApiError, ControlClient
from services.actuator.decision import Check, History, Live, Target, check, static_check
from services.actuator.policy import Policy

log = get_logger(__name__)
SERVICE = "actuator"
FINAL = ("blocked", "rejected", "expired", "executed", "failed")
OUTCOMES = telemetry.counter(SERVICE, "actions", "Actions that reached a final state, by state.", ["outcome"])
APPROVAL_WAIT = telemetry.histogram(SERVICE, "approval_wait_seconds",
                                    "Time from pending_approval to the operator's decision or expiry.",
                                    ["decision"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200))
PENDING = telemetry.gauge(SERVICE, "pending_approvals", "Actions waiting for an operator.")
READBACK_TOLERANCE = 1e-6

Publish = Callable[[dict[str, Any]], Awaitable[None]]


class ActionConflict(Exception):
    """The action cannot take this decision (already decided, expired)."""


def action_id(recommendation_id: str, index: int) -> str:
    return f"{recommendation_id}-a{index}"


class Actuator:
    def __init__(self, plant: PlantModel, policy: Policy, control: ControlClient, publish: Publish,
                 dry_run: bool = False, clock: Callable[[], float] = time.time,
                 requested_by: str = "lineguard-actuator") -> None:
        self.plant = plant
        self.policy = policy
        self.control = control
        self._publish = publish
        self.dry_run = dry_run or policy.dry_run
        self.clock = clock
        self.requested_by = requested_by
        self.ledger: dict[str, dict[str, Any]] = {}
        self._machines = {m.entity_id: (m.line_id, m.id) for m in plant.machines()}
        self._calls: dict[tuple[str, str, str], list[float]] = {}  # write calls started, per machine parameter
        self._param_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._action_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()

    # --- ledger ----------------------------------------------------------------------------------------------

    def restore(self, records: Iterable[dict[str, Any] | None]) -> int:
        """Rebuild the ledger from actions.v1 in offset order (the last record of a key wins; None = deleted)."""
        for record in records:
            if record is None or not isinstance(record, dict) or "action_id" not in record:
                continue
            self.ledger[record["action_id"]] = record
        self._calls.clear()
        for record in self.ledger.values():
            if record["status"] in ("executing", "executed") or (record["status"] == "failed"
                                                                  and record.get("attempts", 0) > 0):
                self._calls.setdefault(self._param_key(record), []).append(record["updated_at"] / 1000.0)
        for times in self._calls.values():
            times.sort()
        self._count_pending()
        return len(self.ledger)

    def unfinished(self) -> list[str]:
        """Actions a crash left between steps (resumed at start), oldest first."""
        return [a["action_id"] for a in sorted(self.ledger.values(), key=lambda a: a["created_at"])
                if a["status"] in ("proposed", "approved", "executing")]

    def pending(self, line_id: str | None = None) -> list[dict[str, Any]]:
        return [a for a in sorted(self.ledger.values(), key=lambda a: a["created_at"])
                if a["status"] == "pending_approval" and (line_id is None or a["line_id"] == line_id)]

    def _count_pending(self) -> None:
        PENDING.set(sum(1 for a in self.ledger.values() if a["status"] == "pending_approval"))

    @staticmethod
    def _param_key(record: dict[str, Any]) -> tuple[str, str, str]:
        return (record["line_id"], record.get("machine") or record["machine_entity_id"], record["parameter"])

    def history(self, key: tuple[str, str, str]) -> History:
        return History(tuple(self._calls.get(key, ())))

    # --- intake ----------------------------------------------------------------------------------------------

    def proposals(self, recommendation: dict[str, Any]) -> list[dict[str, Any]]:
        """The `proposed` records of a recommendation's actions that the ledger does not know yet."""
        rec_id = recommendation["id"]
        now_ms = int(self.clock() * 1000)
        evidence = [str(e.get("description", ""))[:300] for e in recommendation.get("evidence") or []][:20]
        out = []
        for index, proposal in enumerate(recommendation.get("proposed_actions") or []):
            aid = action_id(rec_id, index)
            if aid in self.ledger:
                continue  # a replay or a duplicate: this action already has a fate
            urn = proposal["machine_entity_id"]
            machine = self._machines.get(urn, (None, None))[1]
            value = proposal["value"]
            out.append({
                "action_id": aid, "recommendation_id": rec_id, "line_id": recommendation["line_id"],
                "machine_entity_id": urn, "machine": machine, "parameter": proposal["parameter"],
                "value": value, "previous_value": None, "unit_code": proposal.get("unit_code"), "mode": "approve",
                "status": "proposed", "reason": proposal.get("reason"), "actor": None, "created_at": now_ms,
                "updated_at": now_ms, "expires_at": None, "readback_value": None, "error": None,
                "proposal_reason": proposal.get("reason"), "recommendation_title": recommendation.get("title"),
                "evidence": evidence, "policy_check": None, "comment": None, "dry_run": self.dry_run,
                "attempts": 0,
            })
        return out

    async def record(self, proposed: dict[str, Any]) -> bool:
        """Put a `proposed` record on the audit trail (acknowledged); False when the action is already known."""
        if proposed["action_id"] in self.ledger:
            return False
        await self._write(proposed)
        return True

    async def intake(self, recommendation: dict[str, Any]) -> list[str]:
        """Record every new action of a recommendation as `proposed` (acknowledged), then decide each."""
        ids = []
        for proposed in self.proposals(recommendation):
            if await self.record(proposed):
                ids.append(proposed["action_id"])
        for aid in ids:
            await self.process(aid)
        return ids

    # --- decisions -------------------------------------------------------------------------------------------

    def _target(self, action: dict[str, Any]) -> Target:
        line_id, machine = self._machines.get(action["machine_entity_id"], (action["line_id"], None))
        if machine is not None and line_id != action["line_id"]:
            machine = None  # a machine of another line is unknown to this recommendation's line
        return Target(action["line_id"], machine, action["parameter"], action["value"], action.get("unit_code"))

    def _lock(self, action: dict[str, Any]) -> asyncio.Lock:
        return self._param_locks.setdefault(self._param_key(action), asyncio.Lock())

    async def _live(self, target: Target) -> tuple[Live | None, str | None]:
        assert target.machine_id is not None
        try:
            machine = await self.control.machine(target.line_id, target.machine_id)
        except ControlApiError as exc:
            return None, str(exc)
        setpoint = (machine.get("setpoints") or {}).get(target.parameter) or {}
        value = setpoint.get("value") if isinstance(setpoint, dict) else None
        value = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        return Live(str(machine.get("state", "unknown")), value), None

    async def _check(self, action: dict[str, Any]) -> tuple[Check, str | None]:
        target = self._target(action)
        first = static_check(self.policy, target)
        if not first.allowed:
            return first, None
        live, error = await self._live(target)
        if live is None:
            return first, f"reading the live state failed: {error}"
        return check(self.policy, target, live, self.history(self._param_key(action)), self.clock()), None

    async def process(self, aid: str) -> dict[str, Any]:
        """Decide a `proposed` action; resume an `approved` or `executing` one (after a restart)."""
        action = self.ledger[aid]
        if action["status"] == "approved":
            return await self._execute_approved(aid)
        if action["status"] == "executing":
            async with self._lock(action):
                return await self._call_and_verify(self.ledger[aid], resumed=True)
        if action["status"] != "proposed":
            return action
        async with self._lock(action):
            action = self.ledger[aid]
            result, error = await self._check(action)
            policy_check = json.dumps(result.to_dict(), sort_keys=True)
            common = {"mode": result.mode, "policy_check": policy_check, "previous_value": result.current_value}
            if error is not None:
                return await self._transition(action, "failed", reason=error, error=error, **common)
            if not result.allowed:
                return await self._transition(action, "blocked", reason=result.reason, **common)
            if self.dry_run:
                would = "asked an operator to approve" if result.mode == "approve" else "executed"
                return await self._transition(action, "blocked", dry_run=True, **common,
                                              reason=f"dry run: the policy allows it and would have {would} it; "
                                                     "the control API was not called")
            if result.mode == "approve":
                assert result.rule is not None
                expires = int((self.clock() + result.rule.approval_timeout_s) * 1000)
                return await self._transition(action, "pending_approval", expires_at=expires, **common)
            executing = await self._transition(action, "executing", **common)
            return await self._call_and_verify(executing)

    async def approve(self, aid: str, actor: str, comment: str | None, wait_s: float = 10.0) -> dict[str, Any]:
        async with self._action_lock(aid):
            action = await self._decidable(aid)
            await self._transition(action, "approved", actor=actor, comment=comment,
                                   reason=action.get("proposal_reason"))
            APPROVAL_WAIT.labels("approved").observe(self._waited_s(action))
        task = asyncio.create_task(self._execute_approved(aid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        with contextlib.suppress(TimeoutError):  # still executing: the answer shows where it stands
            await asyncio.wait_for(asyncio.shield(task), timeout=wait_s)
        return self.ledger[aid]

    async def reject(self, aid: str, actor: str, comment: str | None) -> dict[str, Any]:
        async with self._action_lock(aid):
            action = await self._decidable(aid)
            APPROVAL_WAIT.labels("rejected").observe(self._waited_s(action))
            why = f"rejected by {actor}" + (f": {comment}" if comment else "")
            return await self._transition(action, "rejected", actor=actor, comment=comment, reason=why)

    async def expire_due(self) -> int:
        """Expire every pending action past its time; returns how many."""
        now_ms = int(self.clock() * 1000)
        due = [a["action_id"] for a in self.pending() if a.get("expires_at") is not None
               and a["expires_at"] <= now_ms]
        for aid in due:
            async with self._action_lock(aid):
                action = self.ledger[aid]
                if action["status"] == "pending_approval":
                    await self._expire(action)
        return len(due)

    def _action_lock(self, aid: str) -> asyncio.Lock:
        return self._action_locks.setdefault(aid, asyncio.Lock())

    async def _decidable(self, aid: str) -> dict[str, Any]:
        """The pending action an operator may decide (call under the action's lock); expires it when due."""
        action = self.ledger.get(aid)
        if action is None:
            raise KeyError(aid)
        if action["status"] == "expired":
            raise ActionConflict(f"action {aid} has expired")
        if action["status"] != "pending_approval":
            raise ActionConflict(f"action {aid} is {action['status']}: it was already decided")
        if action.get("expires_at") is not None and action["expires_at"] <= int(self.clock() * 1000):
            await self._expire(action)
            raise ActionConflict(f"action {aid} has expired")
        return action

    async def expire_if_due(self, aid: str) -> None:
        async with self._action_lock(aid):
            action = self.ledger.get(aid)
            if action is not None and action["status"] == "pending_approval" and \
                    action.get("expires_at") is not None and action["expires_at"] <= int(self.clock() * 1000):
                await self._expire(action)

    async def _expire(self, action: dict[str, Any]) -> None:
        APPROVAL_WAIT.labels("expired").observe(self._waited_s(action))
        timeout_s = (action["expires_at"] - action["updated_at"]) / 1000.0
        await self._transition(action, "expired", actor="policy",
                               reason=f"expired: no operator decided within {timeout_s:g} s")

    def _waited_s(self, action: dict[str, Any]) -> float:
        return max(0.0, self.clock() - action["updated_at"] / 1000.0)

    async def _execute_approved(self, aid: str) -> dict[str, Any]:
        """Approving re-checks the policy against the live state at that moment, then executes."""
        action = self.ledger[aid]
        async with self._lock(action):
            action = self.ledger[aid]
            if action["status"] != "approved":
                return action
            result, error = await self._check(action)
            policy_check = json.dumps(result.to_dict(), sort_keys=True)
            if error is not None:
                return await self._transition(action, "failed", reason=error, error=error, policy_check=policy_check)
            if not result.allowed:
                return await self._transition(action, "blocked", policy_check=policy_check,
                                              reason=f"approved by {action.get('actor')}, but the policy check at "
                                                     f"execution refused it: {result.reason}")
            if self.dry_run:
                return await self._transition(action, "blocked", dry_run=True, policy_check=policy_check,
                                              reason="dry run: approved and allowed; the control API was not called")
            executing = await self._transition(action, "executing", policy_check=policy_check,
                                               previous_value=result.current_value)
            return await self._call_and_verify(executing)

    # --- execution -------------------------------------------------------------------------------------------

    async def _call_and_verify(self, action: dict[str, Any], resumed: bool = False) -> dict[str, Any]:
        """Call the control API with the action id as Idempotency-Key, then read the value back."""
        target = self._target(action)
        assert target.machine_id is not None, "only a checked action reaches execution"
        key = self._param_key(action)
        if not resumed:
            self._calls.setdefault(key, []).append(self.clock())
        reason = action.get("proposal_reason") or action.get("reason")
        attempts = action.get("attempts", 0)
        try:
            if target.command:
                answer = await self.control.command(target.line_id, target.machine_id, target.parameter,
                                                    action["action_id"], reason, self.requested_by)
            else:
                answer = await self.control.set_setpoint(target.line_id, target.machine_id, target.parameter,
                                                         float(target.value), action["action_id"], reason,
                                                         self.requested_by)
        except ControlApiError as exc:
            return await self._transition(action, "failed", error=str(exc), attempts=attempts + exc.attempts,
                                          reason=f"the control API refused or did not answer: {exc}")
        attempts += 1
        previous = answer.get("previous") if not target.command else None
        previous = float(previous) if isinstance(previous, (int, float)) else action.get("previous_value")
        live, error = await self._live(target)
        if live is None:
            return await self._transition(action, "failed", attempts=attempts, previous_value=previous,
                                          error=f"read-back failed: {error}",
                                          reason=f"the controller accepted the change but the read-back failed: "
                                                 f"{error}")
        if target.command:
            wanted = "running" if target.parameter == "start" else "stopped"
            ok, shown, readback = live.state == wanted, live.state, None
        else:
            readback = live.value
            ok = readback is not None and abs(readback - float(target.value)) <= READBACK_TOLERANCE
            shown = f"{readback:g}" if readback is not None else "no value"
            wanted = f"{float(target.value):g}"
        if not ok:
            return await self._transition(action, "failed", attempts=attempts, previous_value=previous,
                                          readback_value=readback,
                                          error=f"read-back shows {shown}, not {wanted}",
                                          reason=f"the change did not take: read-back shows {shown}, not {wanted}")
        return await self._transition(action, "executed", attempts=attempts, previous_value=previous,
                                      readback_value=readback, error=None,
                                      reason=action.get("proposal_reason") or action.get("reason"))

    # --- audit -----------------------------------------------------------------------------------------------

    async def _transition(self, action: dict[str, Any], status: str, **changes: Any) -> dict[str, Any]:
        record = {**action, **changes, "status": status, "updated_at": int(self.clock() * 1000)}
        await self._write(record)
        if status in FINAL:
            OUTCOMES.labels(status).inc()
        level = logging.WARNING if status in ("failed",) else logging.INFO
        event(log, f"action_{status}", level=level, action_id=record["action_id"], line=record["line_id"],
              machine=record.get("machine"), parameter=record["parameter"], value=record["value"],
              previous=record.get("previous_value"), actor=record.get("actor"), reason=record.get("reason"))
        return record

    async def _write(self, record: dict[str, Any]) -> None:
        """Publish (acknowledged) first, then the ledger: a step the audit trail lacks never happened."""
        await self._publish(record)
        self.ledger[record["action_id"]] = record
        self._count_pending()

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait for executions started by approvals (on shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a non-finite number shows as null (the reason says what it was)."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def public_view(action: dict[str, Any]) -> dict[str, Any]:
    """An action as the approvals API shows it."""
    try:
        policy_check = json.loads(action["policy_check"]) if action.get("policy_check") else None
    except ValueError:
        policy_check = None
    return {
        "action_id": action["action_id"], "recommendation_id": action.get("recommendation_id"),
        "recommendation_title": action.get("recommendation_title"), "line_id": action["line_id"],
        "machine": action.get("machine"), "machine_entity_id": action["machine_entity_id"],
        "parameter": action["parameter"], "current_value": action.get("previous_value"),
        "proposed_value": _finite(action["value"]), "unit": action.get("unit_code"), "reason": action.get("reason"),
        "proposal_reason": action.get("proposal_reason"), "state": action["status"], "mode": action.get("mode"),
        "policy_check": policy_check, "evidence": list(action.get("evidence") or []),
        "created_at": action["created_at"], "updated_at": action["updated_at"],
        "expires_at": action.get("expires_at"), "actor": action.get("actor"), "comment": action.get("comment"),
        "readback_value": action.get("readback_value"), "error": action.get("error"),
        "dry_run": action.get("dry_run", False), "attempts": action.get("attempts", 0),
    }
