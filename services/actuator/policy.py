"""The actuation policy: which machine parameters the actuator may change, how far, how often, and who decides.

The policy is a YAML file (`examples/cookie-line/actuation-policy.yaml`) checked against the plant model at start;
an error names the file, the YAML line and the field. What it does not list is denied: an unknown line, machine,
parameter or command never reaches the control API. A listed parameter's limits may only narrow the plant model's
setpoint limits (min, max, largest step), never widen them. Start and stop of a machine are `approve` at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lineguard.plant import LineNumberLoader, PlantModel, PlantModelError, YamlChecker

MODES = ("auto", "approve", "deny")
COMMANDS = ("start", "stop")
COMMAND_MODES = ("approve", "deny")
DEFAULT_MODE = "approve"
DEFAULT_COOLDOWN_S = 300.0
DEFAULT_MAX_CHANGES_PER_HOUR = 4
DEFAULT_APPROVAL_TIMEOUT_S = 900.0
_TOP_KEYS = {"version", "dry_run", "default_mode", "approval_timeout_s", "lines"}
_RULE_KEYS = {"mode", "min", "max", "max_step", "cooldown_s", "max_changes_per_hour", "approval_timeout_s"}
_COMMAND_KEYS = {"mode", "cooldown_s", "max_changes_per_hour", "approval_timeout_s"}


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file, line and field."""


@dataclass(frozen=True)
class Rule:
    """What may happen to one machine parameter (a setpoint) or one command (`start`, `stop`)."""

    line_id: str
    machine_id: str
    parameter: str
    mode: str
    cooldown_s: float
    max_changes_per_hour: int
    approval_timeout_s: float
    command: bool = False
    min: float = math.nan  # setpoints only
    max: float = math.nan
    max_step: float = math.nan
    unit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "cooldown_s": self.cooldown_s,
                               "max_changes_per_hour": self.max_changes_per_hour,
                               "approval_timeout_s": self.approval_timeout_s}
        if not self.command:
            out.update(min=self.min, max=self.max, max_step=self.max_step, unit=self.unit)
        return out


@dataclass(frozen=True)
class Policy:
    dry_run: bool = False
    default_mode: str = DEFAULT_MODE
    approval_timeout_s: float = DEFAULT_APPROVAL_TIMEOUT_S
    rules: dict[tuple[str, str, str], Rule] = field(default_factory=dict)
    source: str = "<policy>"

    def rule(self, line_id: str, machine_id: str, parameter: str) -> Rule | None:
        return self.rules.get((line_id, machine_id, parameter))


def load_policy(path: str | Path, plant: PlantModel) -> Policy:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the actuation policy: {exc.strerror}") from exc
    return parse_policy(text, plant, source=str(path))


def parse_policy(text: str, plant: PlantModel, source: str = "<policy>") -> Policy:
    try:
        return _parse(text, plant, source)
    except PlantModelError as exc:  # the shared checker's errors already name file, line and field
        raise PolicyError(str(exc)) from None


def _unknown_keys(check: YamlChecker, node: dict, path: str, allowed: set[str]) -> None:
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise check.fail(node, f"{path}.{unknown[0]}" if path else unknown[0],
                         f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _number(check: YamlChecker, node: dict, key: str, path: str, default: float) -> float:
    value = check.get(node, key, path, float, required=False, default=default)
    if not math.isfinite(value):
        raise check.fail(node, f"{path}.{key}", f"expected a finite number, got {value!r}")
    return value


def _parse(text: str, plant: PlantModel, source: str) -> Policy:
    check = YamlChecker(source)
    try:
        doc = yaml.load(text, Loader=LineNumberLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise PolicyError(f"{source}: the policy must be a mapping with 'lines'")
    _unknown_keys(check, doc, "", _TOP_KEYS)
    version = check.get(doc, "version", "", int, required=False, default=1)
    if version != 1:
        raise check.fail(doc, "version", f"only version 1 is known, got {version}")
    dry_run = check.get(doc, "dry_run", "", bool, required=False, default=False)
    default_mode = check.get(doc, "default_mode", "", str, required=False, default=DEFAULT_MODE)
    if default_mode not in MODES:
        raise check.fail(doc, "default_mode", f"expected one of {', '.join(MODES)}, got {default_mode!r}")
    timeout = _number(check, doc, "approval_timeout_s", "", DEFAULT_APPROVAL_TIMEOUT_S)
    if timeout <= 0:
        raise check.fail(doc, "approval_timeout_s", f"expected > 0, got {timeout}")
    rules: dict[tuple[str, str, str], Rule] = {}
    raw_lines = check.get(doc, "lines", "", dict)
    for line_id, raw_line in raw_lines.items():
        lpath = f"lines.{line_id}"
        line = plant.lines.get(line_id)
        if line is None:
            raise check.fail(raw_lines, lpath, f"no such line in the plant model (known: "
                                               f"{', '.join(sorted(plant.lines))})")
        _unknown_keys(check, raw_line if isinstance(raw_line, dict) else {}, lpath, {"machines"})
        raw_machines = check.get(raw_line, "machines", lpath, dict)
        for machine_id, raw_machine in raw_machines.items():
            mpath = f"{lpath}.machines.{machine_id}"
            machine = line.machines.get(machine_id)
            if machine is None:
                raise check.fail(raw_machines, mpath, f"no such machine on line {line_id} (known: "
                                                      f"{', '.join(sorted(line.machines))})")
            if not isinstance(raw_machine, dict):
                raise check.fail(raw_machines, mpath, "expected a mapping with 'setpoints' and/or 'commands'")
            _unknown_keys(check, raw_machine, mpath, {"setpoints", "commands"})
            raw_setpoints = check.get(raw_machine, "setpoints", mpath, dict, required=False, default={})
            for parameter, raw_rule in raw_setpoints.items():
                ppath = f"{mpath}.setpoints.{parameter}"
                limits = machine.setpoints.get(parameter)
                if limits is None:
                    raise check.fail(raw_setpoints, ppath, f"machine {machine_id} has no setpoint {parameter!r} "
                                                           f"(known: {', '.join(machine.setpoints) or 'none'})")
                if not isinstance(raw_rule, dict):
                    raise check.fail(raw_setpoints, ppath, "expected a mapping (mode, min, max, max_step, ...)")
                _unknown_keys(check, raw_rule, ppath, _RULE_KEYS)
                mode = check.get(raw_rule, "mode", ppath, str, required=False, default=default_mode)
                if mode not in MODES:
                    raise check.fail(raw_rule, f"{ppath}.mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
                low = _number(check, raw_rule, "min", ppath, limits.min)
                high = _number(check, raw_rule, "max", ppath, limits.max)
                step = _number(check, raw_rule, "max_step", ppath, limits.max_step)
                if low < limits.min:
                    raise check.fail(raw_rule, f"{ppath}.min", f"{low} is below the plant model's limit "
                                                               f"{limits.min} (the policy may only narrow it)")
                if high > limits.max:
                    raise check.fail(raw_rule, f"{ppath}.max", f"{high} is above the plant model's limit "
                                                               f"{limits.max} (the policy may only narrow it)")
                if low > high:
                    raise check.fail(raw_rule, f"{ppath}.min", f"min {low} is greater than max {high}")
                if not 0 < step <= limits.max_step:
                    raise check.fail(raw_rule, f"{ppath}.max_step", f"expected > 0 and at most the plant model's "
                                                                    f"{limits.max_step}, got {step}")
                rules[(line_id, machine_id, parameter)] = Rule(
                    line_id, machine_id, parameter, mode, *_pace(check, raw_rule, ppath, timeout),
                    min=low, max=high, max_step=step, unit=limits.unit)
            raw_commands = check.get(raw_machine, "commands", mpath, dict, required=False, default={})
            for command, raw_rule in raw_commands.items():
                cpath = f"{mpath}.commands.{command}"
                if command not in COMMANDS:
                    raise check.fail(raw_commands, cpath, f"unknown command (known: {', '.join(COMMANDS)})")
                if isinstance(raw_rule, str):  # `start: approve` is short for `start: {mode: approve}`
                    raw_rule = {"mode": raw_rule}
                if not isinstance(raw_rule, dict):
                    raise check.fail(raw_commands, cpath, "expected a mode or a mapping")
                _unknown_keys(check, raw_rule, cpath, _COMMAND_KEYS)
                mode = raw_rule.get("mode") or ("approve" if default_mode == "auto" else default_mode)
                if mode not in COMMAND_MODES:
                    raise check.fail(raw_rule if hasattr(raw_rule, "line") else raw_commands, f"{cpath}.mode",
                                     f"start and stop are 'approve' at most (allowed: {', '.join(COMMAND_MODES)}),"
                                     f" got {mode!r}")
                rules[(line_id, machine_id, command)] = Rule(
                    line_id, machine_id, command, mode, *_pace(check, raw_rule, cpath, timeout), command=True)
    return Policy(dry_run=dry_run, default_mode=default_mode, approval_timeout_s=timeout, rules=rules,
                  source=source)


def _pace(check: YamlChecker, raw: dict, path: str, default_timeout: float) -> tuple[float, int, float]:
    cooldown = _number(check, raw, "cooldown_s", path, DEFAULT_COOLDOWN_S)
    if cooldown < 0:
        raise check.fail(raw, f"{path}.cooldown_s", f"expected >= 0, got {cooldown}")
    per_hour = check.get(raw, "max_changes_per_hour", path, int, required=False,
                         default=DEFAULT_MAX_CHANGES_PER_HOUR)
    if isinstance(per_hour, bool) or per_hour < 1:
        raise check.fail(raw, f"{path}.max_changes_per_hour", f"expected an integer >= 1 (use mode: deny to "
                                                               f"forbid changes), got {per_hour!r}")
    timeout = _number(check, raw, "approval_timeout_s", path, default_timeout)
    if timeout <= 0:
        raise check.fail(raw, f"{path}.approval_timeout_s", f"expected > 0, got {timeout}")
    return cooldown, per_hour, timeout
