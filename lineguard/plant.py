"""The plant model (one YAML file per site) and the asset graph built from it.

The model declares lines, machines, sensors, units, normal ranges and setpoint limits, and the
relationships between machines. Everything becomes an NGSI-LD style entity with a URN id:

    urn:ngsi-ld:Site:bakery1
    urn:ngsi-ld:Line:line1
    urn:ngsi-ld:Machine:line1-oven
    urn:ngsi-ld:Sensor:line1-oven-zone1_temperature

Validation errors name the file, the YAML line and the field, so an SRE can fix the file without guessing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NGSI_LD_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"


class PlantModelError(ValueError):
    """The plant model file is invalid; the message names the file, line and field."""


def entity_id(kind: str, *parts: str) -> str:
    return f"urn:ngsi-ld:{kind}:{'-'.join(parts)}"


@dataclass(frozen=True)
class Range:
    min: float
    max: float

    def contains(self, value: float) -> bool:
        return self.min <= value <= self.max


@dataclass(frozen=True)
class Sensor:
    line_id: str
    machine_id: str
    attribute: str
    device: str
    metric: str
    unit: str | None = None
    kind: str = "number"  # number | state
    normal: Range | None = None
    states: tuple[str, ...] = ()
    setpoint: str | None = None  # the setpoint parameter this reading follows

    @property
    def id(self) -> str:
        return entity_id("Sensor", self.line_id, self.machine_id, self.attribute)

    @property
    def machine_entity_id(self) -> str:
        return entity_id("Machine", self.line_id, self.machine_id)


@dataclass(frozen=True)
class Setpoint:
    parameter: str
    unit: str | None
    default: float
    min: float
    max: float
    max_step: float

    def check(self, value: float, current: float | None = None) -> str | None:
        """Return why `value` is not allowed, or None when it is."""
        if not self.min <= value <= self.max:
            return f"{self.parameter}={value} is outside the limits [{self.min}, {self.max}] {self.unit or ''}".strip()
        if current is not None and abs(value - current) > self.max_step + 1e-9:
            return f"{self.parameter}: a step of {abs(value - current):g} exceeds the largest allowed step {self.max_step:g}"
        return None


@dataclass
class Machine:
    line_id: str
    id: str
    type: str
    name: str
    feeds: list[str] = field(default_factory=list)
    affects: list[str] = field(default_factory=list)
    protocol: str | None = None
    inspects: bool = False
    sensors: list[Sensor] = field(default_factory=list)
    setpoints: dict[str, Setpoint] = field(default_factory=dict)
    # Data points every controller reports besides its sensors: the machine's run state and each setpoint's
    # current value (named after the parameter, or `<parameter>_setpoint` where a sensor already has that name).
    derived_sensors: list[Sensor] = field(default_factory=list)

    @property
    def entity_id(self) -> str:
        return entity_id("Machine", self.line_id, self.id)

    def all_sensors(self) -> list[Sensor]:
        return [*self.sensors, *self.derived_sensors]

    def derive_sensors(self) -> None:
        device = f"{self.line_id}-{self.id}"
        taken = {s.attribute for s in self.sensors}
        derived = []
        if "state" not in taken:
            derived.append(Sensor(self.line_id, self.id, "state", device, "state", kind="state",
                                  states=("running", "stopped", "fault")))
        for parameter, sp in self.setpoints.items():
            name = parameter if parameter not in taken else f"{parameter}_setpoint"
            derived.append(Sensor(self.line_id, self.id, name, device, name, unit=sp.unit,
                                  normal=Range(sp.min, sp.max)))
        self.derived_sensors = derived

    def sensor(self, attribute: str) -> Sensor | None:
        return next((s for s in self.sensors if s.attribute == attribute), None)


@dataclass
class Line:
    id: str
    name: str
    site_id: str
    controller_id: str | None = None
    controller_api: str | None = None
    machines: dict[str, Machine] = field(default_factory=dict)

    @property
    def entity_id(self) -> str:
        return entity_id("Line", self.id)


@dataclass
class PlantModel:
    site_id: str
    site_name: str
    timezone: str
    lines: dict[str, Line]
    source: str = "<memory>"

    # (device, metric) -> sensor; built once so the normalizer's hot path is a dict lookup.
    _by_device_metric: dict[tuple[str, str], Sensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for sensor in self.sensors():
            self._by_device_metric[(sensor.device, sensor.metric)] = sensor

    def sensors(self) -> Iterator[Sensor]:
        """Every sensor, declared and derived (run state, setpoint values)."""
        for line in self.lines.values():
            for machine in line.machines.values():
                yield from machine.all_sensors()

    def machines(self) -> Iterator[Machine]:
        for line in self.lines.values():
            yield from line.machines.values()

    def machine(self, line_id: str, machine_id: str) -> Machine | None:
        line = self.lines.get(line_id)
        return line.machines.get(machine_id) if line else None

    def sensor_for(self, device: str, metric: str) -> Sensor | None:
        return self._by_device_metric.get((device, metric))

    def devices(self) -> set[str]:
        return {device for device, _ in self._by_device_metric}

    @property
    def site_entity_id(self) -> str:
        return entity_id("Site", self.site_id)

    def graph(self) -> AssetGraph:
        return AssetGraph(self)


class AssetGraph:
    """Entities and relationships of the plant, with upstream and downstream walks.

    Material flow is `feeds` (mixer feeds depositor). `affects` (the hall environment affects the mixer)
    counts as upstream influence too, so the walk from a symptom reaches every candidate cause.
    """

    def __init__(self, plant: PlantModel) -> None:
        self.plant = plant
        self._downstream: dict[str, list[str]] = {}
        self._upstream: dict[str, list[str]] = {}
        for machine in plant.machines():
            src = machine.entity_id
            self._downstream.setdefault(src, [])
            self._upstream.setdefault(src, [])
            for target in [*machine.feeds, *machine.affects]:
                dst = entity_id("Machine", machine.line_id, target)
                self._downstream[src].append(dst)
                self._upstream.setdefault(dst, []).append(src)

    def _walk(self, start: str, edges: dict[str, list[str]]) -> list[str]:
        seen: set[str] = {start}
        order: list[str] = []
        queue = deque(edges.get(start, []))
        while queue:
            node = queue.popleft()
            if node in seen:
                continue
            seen.add(node)
            order.append(node)
            queue.extend(edges.get(node, []))
        return order

    def upstream(self, machine_entity_id: str) -> list[str]:
        """Machines upstream of this one, nearest first (breadth-first)."""
        return self._walk(machine_entity_id, self._upstream)

    def downstream(self, machine_entity_id: str) -> list[str]:
        return self._walk(machine_entity_id, self._downstream)

    def entities(self) -> list[dict[str, Any]]:
        """Every entity as NGSI-LD JSON-LD (normalized form, without the @context)."""
        plant = self.plant
        out: list[dict[str, Any]] = [
            {"id": plant.site_entity_id, "type": "Site", "name": {"type": "Property", "value": plant.site_name}}
        ]
        for line in plant.lines.values():
            entity: dict[str, Any] = {
                "id": line.entity_id,
                "type": "Line",
                "name": {"type": "Property", "value": line.name},
                "partOf": {"type": "Relationship", "object": plant.site_entity_id},
            }
            if line.controller_id:
                entity["controlledBy"] = {"type": "Relationship", "object": entity_id("Controller", line.controller_id)}
            out.append(entity)
            if line.controller_id:
                out.append(
                    {
                        "id": entity_id("Controller", line.controller_id),
                        "type": "Controller",
                        "partOf": {"type": "Relationship", "object": line.entity_id},
                    }
                )
            for machine in line.machines.values():
                out.append(self.machine_entity(machine))
                for sensor in machine.all_sensors():
                    out.append(self.sensor_entity(sensor))
        return out

    def machine_entity(self, machine: Machine) -> dict[str, Any]:
        line = self.plant.lines[machine.line_id]
        entity: dict[str, Any] = {
            "id": machine.entity_id,
            "type": "Machine",
            "machineType": {"type": "Property", "value": machine.type},
            "name": {"type": "Property", "value": machine.name},
            "partOf": {"type": "Relationship", "object": line.entity_id},
            "hasSensor": {"type": "Relationship", "object": [s.id for s in machine.all_sensors()]},
        }
        feeds = [entity_id("Machine", machine.line_id, m) for m in machine.feeds]
        if feeds:
            entity["feeds"] = {"type": "Relationship", "object": feeds if len(feeds) > 1 else feeds[0]}
        affects = [entity_id("Machine", machine.line_id, m) for m in machine.affects]
        if affects:
            entity["affects"] = {"type": "Relationship", "object": affects}
        if line.controller_id:
            entity["controlledBy"] = {"type": "Relationship", "object": entity_id("Controller", line.controller_id)}
        if machine.setpoints:
            entity["setpointLimits"] = {
                "type": "Property",
                "value": {
                    p: {"min": s.min, "max": s.max, "maxStep": s.max_step, "unitCode": s.unit, "default": s.default}
                    for p, s in machine.setpoints.items()
                },
            }
        return entity

    @staticmethod
    def sensor_entity(sensor: Sensor) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "id": sensor.id,
            "type": "Sensor",
            "observes": {"type": "Property", "value": sensor.attribute},
            "device": {"type": "Property", "value": sensor.device},
            "isSensorOf": {"type": "Relationship", "object": sensor.machine_entity_id},
        }
        if sensor.unit:
            entity["unitCode"] = {"type": "Property", "value": sensor.unit}
        if sensor.normal:
            entity["normalRange"] = {"type": "Property", "value": {"min": sensor.normal.min, "max": sensor.normal.max}}
        return entity

    def jsonld(self) -> dict[str, Any]:
        return {"@context": NGSI_LD_CONTEXT, "@graph": self.entities()}


# --- loading and validation -------------------------------------------------------------------------


class _Mapping(dict):
    line: int = 0


class LineNumberLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line number of every mapping, for error messages (the plant model's, and
    every other YAML file an operator writes: the actuation policy, the notification rules)."""


def _construct_mapping(loader: LineNumberLoader, node: yaml.MappingNode) -> _Mapping:
    mapping = _Mapping(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


LineNumberLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class YamlChecker:
    """Typed reads from a mapping loaded with LineNumberLoader; a wrong or missing value fails with file:line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: Any, path: str, why: str) -> PlantModelError:
        line = getattr(node, "line", 0)
        where = f"{self.source}:{line}" if line else self.source
        return PlantModelError(f"{where}: {path}: {why}")

    def get(self, node: Any, key: str, path: str, kind: type | tuple[type, ...], required: bool = True,
            default: Any = None) -> Any:
        if not isinstance(node, dict):
            raise self.fail(node, path, f"expected a mapping, got {type(node).__name__}")
        if key not in node or node[key] is None:
            if required:
                raise self.fail(node, f"{path}.{key}", "is required")
            return default
        value = node[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is float and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(node, f"{path}.{key}", f"expected {names}, got {value!r}")
        return value

    def range(self, node: Any, key: str, path: str) -> Range | None:
        raw = self.get(node, key, path, dict, required=False)
        if raw is None:
            return None
        low = self.get(raw, "min", f"{path}.{key}", float)
        high = self.get(raw, "max", f"{path}.{key}", float)
        if low > high:
            raise self.fail(raw, f"{path}.{key}", f"min {low} is greater than max {high}")
        return Range(low, high)


def load_plant(path: str | Path) -> PlantModel:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlantModelError(f"{path}: cannot read the plant model: {exc.strerror}") from exc
    return parse_plant(text, source=str(path))


def parse_plant(text: str, source: str = "<plant>") -> PlantModel:
    check = YamlChecker(source)
    try:
        doc = yaml.load(text, Loader=LineNumberLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PlantModelError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise PlantModelError(f"{source}: the plant model must be a mapping with 'site' and 'lines'")
    site = check.get(doc, "site", "", dict)
    site_id = check.get(site, "id", "site", str)
    lines: dict[str, Line] = {}
    raw_lines = check.get(doc, "lines", "", list)
    if not raw_lines:
        raise check.fail(doc, "lines", "at least one line is required")
    for i, raw_line in enumerate(raw_lines):
        lpath = f"lines[{i}]"
        line_id = check.get(raw_line, "id", lpath, str)
        if line_id in lines:
            raise check.fail(raw_line, f"{lpath}.id", f"duplicate line id {line_id!r}")
        controller = check.get(raw_line, "controller", lpath, dict, required=False) or {}
        line = Line(
            id=line_id,
            name=check.get(raw_line, "name", lpath, str, required=False, default=line_id),
            site_id=site_id,
            controller_id=controller.get("id"),
            controller_api=controller.get("api"),
        )
        for j, raw_machine in enumerate(check.get(raw_line, "machines", lpath, list)):
            mpath = f"{lpath}.machines[{j}]"
            machine = _parse_machine(check, raw_machine, mpath, line_id)
            if machine.id in line.machines:
                raise check.fail(raw_machine, f"{mpath}.id", f"duplicate machine id {machine.id!r}")
            line.machines[machine.id] = machine
        for j, raw_machine in enumerate(raw_line["machines"]):
            machine = line.machines[raw_machine["id"]]
            for rel in ("feeds", "affects"):
                for target in getattr(machine, rel):
                    if target not in line.machines:
                        raise check.fail(
                            raw_machine, f"{lpath}.machines[{j}].{rel}",
                            f"unknown machine {target!r} (known: {', '.join(sorted(line.machines))})",
                        )
            for sensor in machine.sensors:
                if sensor.setpoint and sensor.setpoint not in machine.setpoints:
                    raise check.fail(raw_machine, f"{lpath}.machines[{j}].sensors.{sensor.attribute}.setpoint",
                                     f"no setpoint named {sensor.setpoint!r} on machine {machine.id!r}")
        lines[line_id] = line
    plant = PlantModel(
        site_id=site_id,
        site_name=check.get(site, "name", "site", str, required=False, default=site_id),
        timezone=check.get(site, "timezone", "site", str, required=False, default="UTC"),
        lines=lines,
        source=source,
    )
    seen: dict[tuple[str, str], str] = {}
    for sensor in plant.sensors():
        key = (sensor.device, sensor.metric)
        if key in seen:
            raise PlantModelError(f"{source}: sensors {seen[key]} and {sensor.id} both read device "
                                  f"{sensor.device!r} metric {sensor.metric!r}")
        seen[key] = sensor.id
    return plant


def _parse_machine(check: YamlChecker, raw: Any, mpath: str, line_id: str) -> Machine:
    machine_id = check.get(raw, "id", mpath, str)
    machine = Machine(
        line_id=line_id,
        id=machine_id,
        type=check.get(raw, "type", mpath, str),
        name=check.get(raw, "name", mpath, str, required=False, default=machine_id),
        feeds=list(check.get(raw, "feeds", mpath, list, required=False, default=[])),
        affects=list(check.get(raw, "affects", mpath, list, required=False, default=[])),
        protocol=check.get(raw, "protocol", mpath, str, required=False),
        inspects=bool(check.get(raw, "inspects", mpath, bool, required=False, default=False)),
    )
    for k, raw_sensor in enumerate(check.get(raw, "sensors", mpath, list, required=False, default=[])):
        spath = f"{mpath}.sensors[{k}]"
        attribute = check.get(raw_sensor, "attribute", spath, str)
        kind = check.get(raw_sensor, "kind", spath, str, required=False, default="number")
        if kind not in ("number", "state"):
            raise check.fail(raw_sensor, f"{spath}.kind", f"must be 'number' or 'state', got {kind!r}")
        if any(s.attribute == attribute for s in machine.sensors):
            raise check.fail(raw_sensor, f"{spath}.attribute", f"duplicate attribute {attribute!r}")
        machine.sensors.append(
            Sensor(
                line_id=line_id,
                machine_id=machine_id,
                attribute=attribute,
                device=check.get(raw_sensor, "device", spath, str, required=False, default=f"{line_id}-{machine_id}"),
                metric=check.get(raw_sensor, "metric", spath, str, required=False, default=attribute),
                unit=check.get(raw_sensor, "unit", spath, str, required=False),
                kind=kind,
                normal=check.range(raw_sensor, "normal", spath),
                states=tuple(check.get(raw_sensor, "states", spath, list, required=False, default=[])),
                setpoint=check.get(raw_sensor, "setpoint", spath, str, required=False),
            )
        )
    for k, raw_sp in enumerate(check.get(raw, "setpoints", mpath, list, required=False, default=[])):
        ppath = f"{mpath}.setpoints[{k}]"
        parameter = check.get(raw_sp, "parameter", ppath, str)
        low = check.get(raw_sp, "min", ppath, float)
        high = check.get(raw_sp, "max", ppath, float)
        default = check.get(raw_sp, "default", ppath, float)
        step = check.get(raw_sp, "max_step", ppath, float)
        if low > high:
            raise check.fail(raw_sp, f"{ppath}.min", f"min {low} is greater than max {high}")
        if not low <= default <= high:
            raise check.fail(raw_sp, f"{ppath}.default", f"default {default} is outside [{low}, {high}]")
        if step <= 0:
            raise check.fail(raw_sp, f"{ppath}.max_step", f"must be positive, got {step}")
        machine.setpoints[parameter] = Setpoint(parameter, check.get(raw_sp, "unit", ppath, str, required=False),
                                                default, low, high, step)
    machine.derive_sensors()
    return machine


def default_plant_path() -> Path:
    return Path(__file__).resolve().parent.parent / "examples" / "cookie-line" / "plant.yaml"


# --- a plant of many lines (tests, benchmarks, `--lines N`) ------------------------------------------------


def _line_device(device: str, ref_id: str, line_id: str, index: int) -> str:
    """The reference line's device id, made unique for line `index` (1-based; line 1 keeps its own)."""
    if index == 1:
        return device
    if device.startswith(f"{ref_id}-"):
        return f"{line_id}-{device[len(ref_id) + 1:]}"
    if len(device) == 16 and all(c in "0123456789abcdefABCDEF" for c in device):  # a LoRaWAN DevEUI
        return f"{(int(device, 16) + index - 1) % (1 << 64):016x}"
    return f"{device}-{line_id}"


def replicate_lines(text: str, lines: int) -> str:
    """The plant model (YAML text) with `lines` lines line1..lineN, each a copy of the first (reference) line:
    its own machines and device ids, controller `<line>-controller` on the reference API port + (index - 1).
    Deterministic, so every process that generates it from the same file gets the same plant."""
    import copy
    from urllib.parse import urlsplit, urlunsplit

    if lines < 1:
        raise PlantModelError(f"--lines: expected at least 1, got {lines}")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not doc.get("lines"):
        raise PlantModelError("the plant model has no line to replicate")
    ref = doc["lines"][0]
    ref_id = str(ref["id"])
    out = []
    for index in range(1, lines + 1):
        line_id = f"line{index}"
        line = copy.deepcopy(ref)
        line["id"] = line_id
        name = str(ref.get("name", ref_id))
        line["name"] = name[:-1] + str(index) if name.endswith(" 1") else f"{name} ({line_id})"
        controller = line.get("controller")
        if isinstance(controller, dict):
            controller["id"] = f"{line_id}-controller"
            api = controller.get("api")
            if api and index > 1:
                parts = urlsplit(api)
                if parts.port:
                    host = parts.netloc.rsplit(":", 1)[0]
                    controller["api"] = urlunsplit(parts._replace(netloc=f"{host}:{parts.port + index - 1}"))
        for machine in line.get("machines") or []:
            for sensor in machine.get("sensors") or []:
                if sensor.get("device"):
                    sensor["device"] = _line_device(str(sensor["device"]), ref_id, line_id, index)
        out.append(line)
    doc["lines"] = out
    return yaml.safe_dump(doc, sort_keys=False)


def load_plant_lines(path: str | Path, lines: int | None = None) -> PlantModel:
    """The plant model at `path`; with `lines`, that many lines generated from its first line."""
    if lines is None:
        return load_plant(path)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlantModelError(f"{path}: cannot read the plant model: {exc.strerror}") from exc
    return parse_plant(replicate_lines(text, lines), source=f"{path} x{lines} lines")


def write_plant_lines(source: str | Path, lines: int, dest: str | Path) -> Path:
    """Write the generated plant of `lines` lines to `dest` (validated first), for services that read a file."""
    text = replicate_lines(Path(source).read_text(), lines)
    parse_plant(text, source=str(dest))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(f"# Generated from {source}: {lines} lines, each a copy of its first line.\n{text}")
    return dest
