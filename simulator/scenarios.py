"""Fault scenarios: YAML files with the fault to inject and the root cause and right action the system should find.

A scenario file (see examples/cookie-line/scenarios/):

    name: oven_zone_overheat
    description: ...
    duration_s: 1800            # how long a run of this scenario lasts by default (simulated seconds)
    fault:                      # null for a normal run
      type: oven_heat_offset    # one of FAULT_TYPES
      machine: oven
      zone: 2                   # oven_heat_offset only
      attribute: ...            # sensor_bias only: the reading that lies
      start_s: 300              # simulated seconds after the run starts
      duration_s: 3600          # null = until the end of the run
      magnitude: 40.0           # in the unit of the thing it changes (C, Nm, %RH)
      ramp_s: 60                # the fault grows linearly to its full magnitude over this time
    expected:
      symptoms: [...]
      root_cause: {machine: oven, category: process, text: ...}
      right_action:
        text: ...
        setpoint_change: {machine: oven, parameter: zone2_setpoint, direction: decrease, value: 150.0}
        command: null           # or {machine: cooling-conveyor, action: start}

Several faults at once: `faults:` (a list) instead of `fault:`, each fault with its own `expected:` (same shape as
above) and optionally `judge_from_s` (a slow fault: windows before it may still say nothing); the top-level
`expected` may then be left out (it becomes the first fault's).

Invalid files raise ScenarioError naming the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lineguard.plant import Line

FAULT_TYPES: dict[str, str] = {
    "oven_heat_offset": "an oven zone settles `magnitude` C above its setpoint (the heat is real)",
    "mixer_torque_loss": "the mixer drive slips; dough torque falls by `magnitude` Nm and the dough is under-developed",
    "humidity_rise": "hall humidity rises by `magnitude` %RH; the dough takes up moisture",
    "conveyor_stop": "the cooling conveyor trips and stops (state 'fault') until started again or the fault ends",
    "sensor_bias": "a sensor reads `magnitude` off the truth; the process itself is unchanged",
    "cooling_fault": "the cooling conveyor's air runs `magnitude` C colder; fast cooling cracks cookies",
}
ROOT_CAUSE_CATEGORIES = ("process", "equipment", "environment", "sensor", "none")
DIRECTIONS = ("increase", "decrease")
COMMANDS = ("start", "stop")
SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "examples" / "cookie-line" / "scenarios"


class ScenarioError(ValueError):
    """The scenario file is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Fault:
    type: str
    machine: str
    start_s: float
    duration_s: float | None = None
    magnitude: float = 0.0
    ramp_s: float = 0.0
    zone: int | None = None
    attribute: str | None = None

    def level(self, t: float) -> float:
        """How much of the fault is present at simulated second `t` (0..1)."""
        if t < self.start_s:
            return 0.0
        if self.duration_s is not None and t >= self.start_s + self.duration_s:
            return 0.0
        if self.ramp_s > 0:
            return min(1.0, (t - self.start_s) / self.ramp_s)
        return 1.0

    def active(self, t: float) -> bool:
        return self.level(t) > 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "machine": self.machine, "start_s": self.start_s,
                               "duration_s": self.duration_s, "magnitude": self.magnitude, "ramp_s": self.ramp_s}
        if self.zone is not None:
            out["zone"] = self.zone
        if self.attribute is not None:
            out["attribute"] = self.attribute
        return out


@dataclass(frozen=True)
class SetpointChange:
    machine: str
    parameter: str
    direction: str
    value: float


@dataclass(frozen=True)
class MachineCommand:
    machine: str
    action: str


@dataclass(frozen=True)
class Expected:
    root_cause_machine: str | None
    root_cause_category: str
    root_cause_text: str
    action_text: str
    setpoint_change: SetpointChange | None = None
    command: MachineCommand | None = None
    symptoms: tuple[str, ...] = ()


@dataclass(frozen=True)
class FaultCase:
    """One fault of a scenario with what the system should find for it."""

    fault: Fault
    expected: Expected
    judge_from_s: float | None = None  # windows starting before this may miss a slow fault


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    fault: Fault | None
    expected: Expected
    source: str = "<memory>"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    cases: tuple[FaultCase, ...] = ()

    @property
    def faults(self) -> list[Fault]:
        if self.cases:
            return [case.fault for case in self.cases]
        return [self.fault] if self.fault else []

    def fault_cases(self) -> list[FaultCase]:
        """Every fault with its expectation (a single-fault scenario: its one fault and `expected`)."""
        if self.cases:
            return list(self.cases)
        return [FaultCase(self.fault, self.expected)] if self.fault else []


def _fail(source: str, path: str, why: str) -> ScenarioError:
    return ScenarioError(f"{source}: {path}: {why}")


def _get(node: Any, key: str, path: str, kinds: type | tuple[type, ...], source: str, required: bool = True,
         default: Any = None) -> Any:
    if not isinstance(node, dict):
        raise _fail(source, path, f"expected a mapping, got {type(node).__name__}")
    value = node.get(key)
    if value is None:
        if required:
            raise _fail(source, f"{path}.{key}".lstrip("."), "is required")
        return default
    if kinds is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds) or (kinds in (float, int) and isinstance(value, bool)):
        raise _fail(source, f"{path}.{key}".lstrip("."), f"expected {getattr(kinds, '__name__', kinds)}, got {value!r}")
    return value


def parse_scenario(doc: Any, line: Line, source: str = "<scenario>") -> Scenario:
    """Validate a scenario document against the line it will run on."""
    if not isinstance(doc, dict):
        raise ScenarioError(f"{source}: a scenario must be a mapping with name, fault and expected")
    name = _get(doc, "name", "", str, source)
    raw_fault = doc.get("fault")
    fault = _parse_fault(raw_fault, line, source) if raw_fault is not None else None
    cases: list[FaultCase] = []
    raw_faults = doc.get("faults")
    if raw_faults is not None:
        if fault is not None or not isinstance(raw_faults, list) or not raw_faults:
            raise _fail(source, "faults", "a non-empty list, instead of (not beside) `fault`")
        for i, raw in enumerate(raw_faults):
            one = _parse_fault(raw, line, f"{source}: faults[{i}]")
            own = _parse_expected(_get(raw, "expected", f"faults[{i}]", dict, source), line,
                                  f"{source}: faults[{i}]")
            judge_from = _get(raw, "judge_from_s", f"faults[{i}]", float, source, required=False)
            cases.append(FaultCase(one, own, judge_from))
        fault = cases[0].fault
    expected = (_parse_expected(_get(doc, "expected", "", dict, source), line, source)
                if doc.get("expected") is not None or not cases else cases[0].expected)
    return Scenario(
        name=name,
        description=_get(doc, "description", "", str, source, required=False, default=""),
        duration_s=_get(doc, "duration_s", "", float, source, required=False, default=1800.0),
        fault=fault,
        expected=expected,
        source=source,
        raw=doc,
        cases=tuple(cases),
    )


def _parse_fault(raw: Any, line: Line, source: str) -> Fault:
    ftype = _get(raw, "type", "fault", str, source)
    if ftype not in FAULT_TYPES:
        raise _fail(source, "fault.type", f"unknown fault {ftype!r}; expected one of {sorted(FAULT_TYPES)}")
    machine = _get(raw, "machine", "fault", str, source)
    if machine not in line.machines:
        raise _fail(source, "fault.machine", f"no machine {machine!r} on line {line.id}")
    start = _get(raw, "start_s", "fault", float, source)
    duration = _get(raw, "duration_s", "fault", float, source, required=False)
    if start < 0 or (duration is not None and duration <= 0):
        raise _fail(source, "fault", "start_s must be >= 0 and duration_s > 0")
    zone = _get(raw, "zone", "fault", int, source, required=False)
    attribute = _get(raw, "attribute", "fault", str, source, required=False)
    if ftype == "oven_heat_offset" and zone not in (1, 2, 3):
        raise _fail(source, "fault.zone", "oven_heat_offset needs zone 1, 2 or 3")
    if ftype == "sensor_bias" and (attribute is None or line.machines[machine].sensor(attribute) is None):
        raise _fail(source, "fault.attribute", f"sensor_bias needs a sensor attribute of machine {machine!r}")
    return Fault(type=ftype, machine=machine, start_s=start, duration_s=duration,
                 magnitude=_get(raw, "magnitude", "fault", float, source, required=False, default=0.0),
                 ramp_s=_get(raw, "ramp_s", "fault", float, source, required=False, default=0.0),
                 zone=zone, attribute=attribute)


def _parse_expected(raw: dict, line: Line, source: str) -> Expected:
    cause = _get(raw, "root_cause", "expected", dict, source)
    category = _get(cause, "category", "expected.root_cause", str, source)
    if category not in ROOT_CAUSE_CATEGORIES:
        raise _fail(source, "expected.root_cause.category", f"expected one of {ROOT_CAUSE_CATEGORIES}")
    cause_machine = _get(cause, "machine", "expected.root_cause", str, source, required=False)
    if cause_machine is not None and cause_machine not in line.machines:
        raise _fail(source, "expected.root_cause.machine", f"no machine {cause_machine!r} on line {line.id}")
    action = _get(raw, "right_action", "expected", dict, source)
    change = None
    raw_change = action.get("setpoint_change")
    if raw_change is not None:
        path = "expected.right_action.setpoint_change"
        machine_id = _get(raw_change, "machine", path, str, source)
        machine = line.machines.get(machine_id)
        if machine is None:
            raise _fail(source, f"{path}.machine", f"no machine {machine_id!r} on line {line.id}")
        parameter = _get(raw_change, "parameter", path, str, source)
        setpoint = machine.setpoints.get(parameter)
        if setpoint is None:
            raise _fail(source, f"{path}.parameter", f"machine {machine_id!r} has no setpoint {parameter!r}")
        direction = _get(raw_change, "direction", path, str, source)
        if direction not in DIRECTIONS:
            raise _fail(source, f"{path}.direction", f"expected one of {DIRECTIONS}")
        value = _get(raw_change, "value", path, float, source)
        why = setpoint.check(value)
        if why:
            raise _fail(source, f"{path}.value", why)
        if (value > setpoint.default) != (direction == "increase"):
            raise _fail(source, f"{path}.direction", f"{direction} does not lead from {setpoint.default} to {value}")
        change = SetpointChange(machine_id, parameter, direction, value)
    command = None
    raw_command = action.get("command")
    if raw_command is not None:
        path = "expected.right_action.command"
        machine_id = _get(raw_command, "machine", path, str, source)
        if machine_id not in line.machines:
            raise _fail(source, f"{path}.machine", f"no machine {machine_id!r} on line {line.id}")
        verb = _get(raw_command, "action", path, str, source)
        if verb not in COMMANDS:
            raise _fail(source, f"{path}.action", f"expected one of {COMMANDS}")
        command = MachineCommand(machine_id, verb)
    symptoms = raw.get("symptoms") or []
    if not isinstance(symptoms, list) or not all(isinstance(s, str) for s in symptoms):
        raise _fail(source, "expected.symptoms", "expected a list of strings")
    return Expected(
        root_cause_machine=cause_machine,
        root_cause_category=category,
        root_cause_text=_get(cause, "text", "expected.root_cause", str, source),
        action_text=_get(action, "text", "expected.right_action", str, source),
        setpoint_change=change,
        command=command,
        symptoms=tuple(symptoms),
    )


def load_scenario(name_or_path: str | Path, line: Line, directory: Path | None = None) -> Scenario:
    """Load a scenario by name (a file in the scenarios folder) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = (directory or SCENARIOS_DIR) / f"{name_or_path}.yaml"
    try:
        text = path.read_text()
    except OSError as exc:
        known = ", ".join(available_scenarios(directory)) or "none"
        raise ScenarioError(f"{path}: cannot read the scenario ({exc.strerror}); known scenarios: {known}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    return parse_scenario(doc, line, source=str(path))


def available_scenarios(directory: Path | None = None) -> list[str]:
    folder = directory or SCENARIOS_DIR
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
