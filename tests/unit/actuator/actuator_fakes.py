"""An in-memory line controller that polices every write against the actuation policy as it arrives, independently
of the actuator's own decision code, and a settable clock. For the actuator's unit and property tests only; the
integration and end-to-end tests run against the simulator's real control API."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lineguard.plant import default_plant_path, load_plant
from services.actuator.control import ControlApiError

PLANT = load_plant(default_plant_path())
LINE = PLANT.lines["line1"]


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class PolicedLine:
    """The line's controller, checking every write against the policy as it arrives."""

    clock: Clock
    policy: object
    approved: set[str]
    dry_run: bool = False
    setpoints: dict[tuple[str, str], float] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    writes: list[tuple[float, str, str, str, float]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    fail_next: list[int] = field(default_factory=list)  # HTTP status (0 = connection refused) of the next answers
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for machine in LINE.machines.values():
            self.states[machine.id] = "running"
            for parameter, limits in machine.setpoints.items():
                self.setpoints[(machine.id, parameter)] = limits.default

    def _maybe_fail(self) -> None:
        if self.fail_next:
            status = self.fail_next.pop(0)
            raise ControlApiError(f"HTTP {status}" if status else "connection refused", status or None)

    async def machine(self, line_id: str, machine_id: str) -> dict:
        self._maybe_fail()
        model = LINE.machines[machine_id]
        return {"id": machine_id, "state": self.states[machine_id],
                "setpoints": {p: {"value": self.setpoints[(machine_id, p)]} for p in model.setpoints}}

    def _police(self, key: str, machine_id: str, parameter: str, value: float | None) -> None:
        now = self.clock()
        rule = self.policy.rule("line1", machine_id, parameter)
        problems = []
        if self.dry_run:
            problems.append("a write in dry run")
        if key in self.keys:
            problems.append("a second write with the same idempotency key")
        if rule is None or rule.mode == "deny":
            problems.append("a write the policy denies or does not list")
        else:
            if rule.mode == "approve" and key not in self.approved:
                problems.append("an approve-mode write no operator approved")
            if value is not None:
                current = self.setpoints[(machine_id, parameter)]
                if not (math.isfinite(value) and rule.min <= value <= rule.max):
                    problems.append(f"value {value} outside [{rule.min}, {rule.max}]")
                elif abs(value - current) > rule.max_step + 1e-9:
                    problems.append(f"step {value - current} larger than {rule.max_step}")
            earlier = [t for t, _, m, p, _ in self.writes if m == machine_id and p == parameter]
            if earlier and now - earlier[-1] < rule.cooldown_s:
                problems.append(f"{now - earlier[-1]} s after the last change, cooldown {rule.cooldown_s}")
            if len([t for t in earlier if now - t < 3600]) >= rule.max_changes_per_hour:
                problems.append("more changes within an hour than the policy allows")
        self.violations += [f"{key} {machine_id}.{parameter}={value}: {p}" for p in problems]
        self.writes.append((now, key, machine_id, parameter, value if value is not None else math.nan))
        self.keys.add(key)

    async def set_setpoint(self, line_id, machine_id, parameter, value, key, reason, requested_by) -> dict:
        self._maybe_fail()
        self._police(key, machine_id, parameter, value)
        previous = self.setpoints[(machine_id, parameter)]
        self.setpoints[(machine_id, parameter)] = value
        return {"previous": previous, "value": value}

    async def command(self, line_id, machine_id, command, key, reason, requested_by) -> dict:
        self._maybe_fail()
        self._police(key, machine_id, command, None)
        self.states[machine_id] = "running" if command == "start" else "stopped"
        return {"state": self.states[machine_id]}
