"""The decision for one proposed action: may it happen, how (auto or approve), and if not, why not.

Pure functions of the policy, the proposal, the live state read from the control API (never the advisor's view,
which may be minutes old) and the recent history of executed changes. The actuator calls `check` when an action is
proposed, again when an operator approves it, and never calls the control API unless the latest check allowed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from services.actuator.policy import COMMANDS, Policy, Rule

HOUR_S = 3600.0
EPSILON = 1e-9


@dataclass(frozen=True)
class Target:
    """What a proposal asks for, resolved against the plant model."""

    line_id: str
    machine_id: str | None  # None: the machine URN is not in the plant model
    parameter: str
    value: float
    unit_code: str | None = None

    @property
    def command(self) -> bool:
        return self.parameter in COMMANDS


@dataclass(frozen=True)
class Live:
    """The machine as the control API shows it now."""

    state: str  # running, stopped, fault
    value: float | None  # the setpoint's current value (None for commands or when the controller lacks it)


@dataclass(frozen=True)
class History:
    """Changes of the same machine parameter: executed (wall-clock seconds) and in flight now."""

    executed_at: tuple[float, ...] = ()
    in_flight: int = 0


@dataclass(frozen=True)
class Check:
    allowed: bool
    mode: str  # auto, approve or deny
    reasons: tuple[str, ...]
    rule: Rule | None
    current_value: float | None = None
    step: float | None = None
    changes_last_hour: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "mode": self.mode, "reasons": list(self.reasons),
                "rule": self.rule.to_dict() if self.rule else None, "current_value": self.current_value,
                "step": self.step, "changes_last_hour": self.changes_last_hour, **self.details}


def static_check(policy: Policy, target: Target) -> Check:
    """What can be refused without the live state: unknown machine or parameter, deny, value outside the limits."""
    reasons: list[str] = []
    if target.machine_id is None:
        return Check(False, "deny", ("unknown machine: not in the plant model",), None)
    rule = policy.rule(target.line_id, target.machine_id, target.parameter)
    if rule is None:
        return Check(False, "deny", (f"{target.machine_id}.{target.parameter} on {target.line_id} is not in the "
                                     f"actuation policy ({policy.source}): denied",), None)
    if rule.mode == "deny":
        return Check(False, "deny", (f"the policy denies changes of {target.machine_id}.{target.parameter}",), rule)
    if not rule.command:
        value = target.value
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            reasons.append(f"value {value!r} is not a finite number")
        elif not rule.min - EPSILON <= value <= rule.max + EPSILON:
            reasons.append(f"value {value:g} is outside the policy's limits [{rule.min:g}, {rule.max:g}]"
                           f"{' ' + rule.unit if rule.unit else ''}")
        if target.unit_code and rule.unit and target.unit_code != rule.unit:
            reasons.append(f"unit {target.unit_code} differs from the setpoint's unit {rule.unit}")
    return Check(not reasons, rule.mode, tuple(reasons), rule)


def check(policy: Policy, target: Target, live: Live | None, history: History, now_s: float) -> Check:
    """The full decision against the live state and history at `now_s` (wall clock, seconds)."""
    first = static_check(policy, target)
    if first.rule is None or first.mode == "deny":
        return first
    rule = first.rule
    reasons = list(first.reasons)
    current = step = None
    if live is None:
        reasons.append("the live state could not be read from the control API")
    elif rule.command:
        wanted = "running" if target.parameter == "start" else "stopped"
        if live.state == wanted:
            reasons.append(f"the machine is already {wanted}")
    elif live.value is None or not math.isfinite(live.value):
        reasons.append(f"the control API reports no current value of {target.parameter}")
    else:
        current = live.value
        if not reasons:  # the value is a finite number within limits
            step = target.value - current
            if abs(step) <= EPSILON:
                reasons.append(f"{target.parameter} is already {current:g}: nothing to change")
            elif abs(step) > rule.max_step + EPSILON:
                reasons.append(f"a step of {abs(step):g} (from {current:g} to {target.value:g}) exceeds the "
                               f"policy's largest step {rule.max_step:g}")
    recent = [t for t in history.executed_at if now_s - t < HOUR_S]
    changes = len(recent) + history.in_flight
    if history.in_flight:
        reasons.append(f"another change of {target.machine_id}.{target.parameter} is in flight")
    last = max(history.executed_at, default=None)
    if last is not None and rule.cooldown_s > 0:
        since = now_s - last
        if since < rule.cooldown_s:
            reasons.append(f"cooldown: the last change was {since:.0f} s ago, the policy wants "
                           f"{rule.cooldown_s:g} s between changes")
    if changes >= rule.max_changes_per_hour:
        reasons.append(f"{changes} changes in the last hour; the policy allows {rule.max_changes_per_hour}")
    return Check(not reasons, rule.mode, tuple(reasons), rule, current, step, changes)
