"""The plant knowledge the analysis uses, loaded from `playbooks.yaml` next to the plant model.

What causes what (playbooks), how a real deviation is told from a lying sensor (the corroboration model), which
readings only measure the flow of product, and the operator texts: all data, checked against the plant model
when loaded, so a new machine type needs an entry in the file, not a code change.
"""

from __future__ import annotations

import fnmatch
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lineguard.plant import Machine, PlantModel

DIRECTIONS = ("high", "low")


class KnowledgeError(ValueError):
    """The playbooks file is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Signal:
    attribute: str
    gain: float
    baseline: float | None = None


@dataclass(frozen=True)
class Corroboration:
    machine_type: str
    attribute: str  # fnmatch pattern
    signals: tuple[Signal, ...] = ()
    product: dict[str, str] = field(default_factory=dict)  # direction -> defect class
    lag_s: float = 0.0
    baseline: float | None = None

    def matches(self, machine: Machine, attribute: str) -> bool:
        return machine.type == self.machine_type and fnmatch.fnmatch(attribute, self.attribute)


@dataclass(frozen=True)
class ActionRule:
    machine: str  # "self" or a machine type on the line
    parameter: str  # a setpoint name, or "{setpoint}": the setpoint that controls the reading
    direction: str  # increase | decrease
    amount: str  # offset | step


@dataclass(frozen=True)
class Playbook:
    id: str
    machine_type: str
    attribute: str
    direction: str
    category: str
    title: str
    root_cause: str
    steps: tuple[str, ...]
    safety: tuple[str, ...] = ()
    compliance: tuple[str, ...] = ()
    defect: str | None = None
    action: ActionRule | None = None

    def matches(self, machine: Machine, attribute: str, direction: str) -> bool:
        return (machine.type == self.machine_type and direction == self.direction
                and fnmatch.fnmatch(attribute, self.attribute))


@dataclass(frozen=True)
class Texts:
    title: str
    root_cause: str
    steps: tuple[str, ...]
    safety: dict[str, tuple[str, ...]] = field(default_factory=dict)  # machine type or "default" -> notes
    compliance: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def notes(self, which: str, machine_type: str) -> list[str]:
        table = self.safety if which == "safety" else self.compliance
        return list(table.get(machine_type, table.get("default", ())))


@dataclass(frozen=True)
class Knowledge:
    units: dict[str, str]
    corroboration: tuple[Corroboration, ...]
    flow_attributes: dict[str, tuple[str, ...]]
    playbooks: tuple[Playbook, ...]
    stopped: dict[str, Texts]
    sensor_fault: Texts
    default: Texts
    source: str = "<memory>"

    def playbook(self, machine: Machine, attribute: str, direction: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.matches(machine, attribute, direction)), None)

    def corroboration_for(self, machine: Machine, attribute: str) -> Corroboration | None:
        return next((c for c in self.corroboration if c.matches(machine, attribute)), None)

    def is_flow(self, machine: Machine, attribute: str | None) -> bool:
        return attribute in self.flow_attributes.get(machine.type, ())

    def stopped_texts(self, machine: Machine) -> Texts:
        return self.stopped.get(machine.type) or self.stopped["default"]

    def symbol(self, unit_code: str | None) -> str:
        """A unit code as the operator reads it (CEL -> °C); unknown codes stay as they are."""
        if not unit_code:
            return ""
        return self.units.get(unit_code, unit_code)

    def defects(self) -> set[str]:
        return {p.defect for p in self.playbooks if p.defect} | {
            d for c in self.corroboration for d in c.product.values()}


def render(template: str, values: dict[str, Any]) -> str:
    """A template with the fields it names filled; a field the analysis does not know stays visible as a gap
    rather than raising, and double spaces (an empty unit) are closed."""
    out = []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(str(values.get(name, "")))
    return " ".join("".join(out).split()).replace(" )", ")").replace("( ", "(").replace(" ,", ",")


def default_knowledge_path(plant_path: str | Path) -> Path:
    return Path(plant_path).with_name("playbooks.yaml")


def load_knowledge(path: str | Path, plant: PlantModel) -> Knowledge:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise KnowledgeError(f"{path}: cannot read the playbooks: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise KnowledgeError(f"{path}: not valid YAML: {exc}") from exc
    return parse_knowledge(doc, plant, str(path))


def _texts(raw: Any, where: str, source: str) -> Texts:
    if not isinstance(raw, dict):
        raise KnowledgeError(f"{source}: {where}: expected a mapping with title, root_cause and steps")
    for key in ("title", "root_cause"):
        if not isinstance(raw.get(key), str):
            raise KnowledgeError(f"{source}: {where}.{key}: expected a text")
    steps = raw.get("steps")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise KnowledgeError(f"{source}: {where}.steps: expected a non-empty list of texts")

    def notes(value: Any, key: str) -> dict[str, tuple[str, ...]]:
        if value is None:
            return {}
        if isinstance(value, list):
            return {"default": tuple(str(v) for v in value)}
        if isinstance(value, dict):
            return {k: tuple(str(v) for v in (vs or ())) for k, vs in value.items()}
        raise KnowledgeError(f"{source}: {where}.{key}: expected a list or a mapping of machine type -> list")

    return Texts(raw["title"], raw["root_cause"], tuple(steps), notes(raw.get("safety"), "safety"),
                 notes(raw.get("compliance"), "compliance"))


def parse_knowledge(doc: Any, plant: PlantModel, source: str = "<playbooks>") -> Knowledge:
    if not isinstance(doc, dict):
        raise KnowledgeError(f"{source}: expected a mapping with playbooks, corroboration and texts")
    types: dict[str, list[Machine]] = {}
    for machine in plant.machines():
        types.setdefault(machine.type, []).append(machine)

    def machine_type(value: Any, where: str) -> str:
        if value not in types:
            raise KnowledgeError(f"{source}: {where}: no machine of type {value!r} in the plant model "
                                 f"(types: {', '.join(sorted(types))})")
        return str(value)

    def attribute(kind: str, pattern: Any, where: str) -> str:
        if not isinstance(pattern, str) or not any(
                fnmatch.fnmatch(s.attribute, pattern) for m in types[kind] for s in m.sensors):
            raise KnowledgeError(f"{source}: {where}: no {kind} sensor matches {pattern!r}")
        return pattern

    corroboration = []
    for i, raw in enumerate(doc.get("corroboration") or []):
        where = f"corroboration[{i}]"
        kind = machine_type(raw.get("machine_type"), f"{where}.machine_type")
        pattern = attribute(kind, raw.get("attribute"), f"{where}.attribute")
        signals = []
        for j, sig in enumerate(raw.get("signals") or []):
            # a signal need not exist on every plant (older fixtures, other lines): absent means "cannot tell"
            if not isinstance(sig, dict) or not isinstance(sig.get("attribute"), str) or not isinstance(
                    sig.get("gain"), int | float):
                raise KnowledgeError(f"{source}: {where}.signals[{j}]: expected {{attribute, gain[, baseline]}}")
            signals.append(Signal(sig["attribute"], float(sig["gain"]),
                                  None if sig.get("baseline") is None else float(sig["baseline"])))
        product = dict(raw.get("product") or {})
        for direction in product:
            if direction not in DIRECTIONS:
                raise KnowledgeError(f"{source}: {where}.product: direction {direction!r} is not high or low")
        corroboration.append(Corroboration(kind, pattern, tuple(signals), product, float(raw.get("lag_s") or 0.0),
                                           None if raw.get("baseline") is None else float(raw["baseline"])))
    playbooks = []
    for i, raw in enumerate(doc.get("playbooks") or []):
        where = f"playbooks[{i}]"
        kind = machine_type(raw.get("machine_type"), f"{where}.machine_type")
        pattern = attribute(kind, raw.get("attribute"), f"{where}.attribute")
        if raw.get("direction") not in DIRECTIONS:
            raise KnowledgeError(f"{source}: {where}.direction: expected high or low")
        texts = _texts(raw, where, source)
        action = None
        if raw.get("action") is not None:
            act = raw["action"]
            if act.get("direction") not in ("increase", "decrease") or act.get("amount") not in ("offset", "step"):
                raise KnowledgeError(f"{source}: {where}.action: direction increase|decrease, amount offset|step")
            target = act.get("machine", "self")
            owners = types[kind] if target == "self" else types.get(target)
            if owners is None:
                raise KnowledgeError(f"{source}: {where}.action.machine: no machine of type {target!r}")
            parameter = str(act.get("parameter"))
            if parameter != "{setpoint}" and not any(parameter in m.setpoints for m in owners):
                raise KnowledgeError(f"{source}: {where}.action.parameter: {target} has no setpoint {parameter!r}")
            action = ActionRule(target, parameter, act["direction"], act["amount"])
        playbooks.append(Playbook(
            str(raw.get("id") or where), kind, pattern, raw["direction"], str(raw.get("category") or
                                                                              "equipment_fault"),
            texts.title, texts.root_cause, texts.steps, texts.safety.get("default", ()),
            texts.compliance.get("default", ()), raw.get("defect"), action))
    stopped_raw = doc.get("stopped") or {}
    if "default" not in stopped_raw:
        raise KnowledgeError(f"{source}: stopped.default: required (texts for a machine that stopped)")
    stopped = {k: _texts(v, f"stopped.{k}", source) for k, v in stopped_raw.items()}
    flow = {k: tuple(v or ()) for k, v in (doc.get("flow_attributes") or {}).items()}
    units = {str(k): str(v) for k, v in (doc.get("units") or {}).items()}
    return Knowledge(units, tuple(corroboration), flow, tuple(playbooks), stopped,
                     _texts(doc.get("sensor_fault"), "sensor_fault", source),
                     _texts(doc.get("default"), "default", source), source)
