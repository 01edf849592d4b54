"""The digital twin: the line's machines in flow order (from the NGSI-LD asset graph) and their live state.

`Twin.from_entities` takes the normalizer's entities (normalized NGSI-LD, as `GET /ngsi-ld/v1/entities` gives
them, or the same export from the local plant model when the normalizer is down). The Kafka follower then folds
`line.observations.v1`, `line.alarms.v1` and `line.inspections.v1` records in with `fold(kind, value)`:
latest readings against their normal ranges, the machine state and since when, open alarms, defect rates by
class over the last `defect_window_s` of event time, and a bounded trend per attribute.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any


def _value(attr: Any) -> Any:
    """A property's value in either the normalized ({"type": "Property", "value": ...}) or keyValues form."""
    if isinstance(attr, dict) and "type" in attr and ("value" in attr or "object" in attr):
        return attr.get("value", attr.get("object"))
    return attr


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass
class Reading:
    attribute: str
    unit: str | None = None
    normal: tuple[float, float] | None = None
    value: Any = None
    observed_at: int | None = None
    trend: deque = field(default_factory=lambda: deque(maxlen=600))

    def status(self) -> str:
        if self.value is None:
            return "unknown"
        if self.normal and isinstance(self.value, (int, float)) and not isinstance(self.value, bool):
            low, high = self.normal
            if self.value < low:
                return "low"
            if self.value > high:
                return "high"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "value": self.value, "unit": self.unit,
                "normal": list(self.normal) if self.normal else None, "observed_at": self.observed_at,
                "status": self.status()}


@dataclass
class MachineState:
    entity_id: str
    machine_id: str
    name: str
    machine_type: str
    feeds: list[str]
    affects: list[str]
    readings: dict[str, Reading] = field(default_factory=dict)
    state: str | None = None
    state_since: int | None = None
    last_seen: int | None = None
    alarms: dict[str, dict[str, Any]] = field(default_factory=dict)
    inspects: bool = False
    inspections: deque = field(default_factory=deque)  # (at ms, defect classes) within the defect window

    def to_dict(self, defect_classes: list[str]) -> dict[str, Any]:
        out = {"entity_id": self.entity_id, "id": self.machine_id, "name": self.name, "type": self.machine_type,
               "feeds": self.feeds, "affects": self.affects, "state": self.state, "state_since": self.state_since,
               "last_seen": self.last_seen,
               "readings": [r.to_dict() for r in self.readings.values() if r.attribute != "state"],
               "alarms": sorted(self.alarms.values(), key=lambda a: a.get("raised_at") or 0, reverse=True)}
        if self.inspects:
            total = len(self.inspections)
            counts = dict.fromkeys(defect_classes, 0)
            defective = 0
            for _, classes in self.inspections:
                defective += bool(classes)
                for name in set(classes):
                    counts[name] = counts.get(name, 0) + 1
            out["inspections"] = {"items": total, "defective_rate": defective / total if total else None,
                                  "rates": {k: (v / total if total else None) for k, v in counts.items()}}
        return out


class Twin:
    def __init__(self, line_id: str, line_name: str, machines: list[MachineState], *, defect_window_ms: int,
                 defect_classes: list[str], trend_points: int = 600, source: str = "normalizer") -> None:
        self.line_id = line_id
        self.line_name = line_name
        self.machines = {m.entity_id: m for m in machines}
        self.order = [m.entity_id for m in machines]
        self.defect_window_ms = defect_window_ms
        self.defect_classes = list(defect_classes)
        self.trend_points = trend_points
        self.source = source
        self.version = 0  # bumped on every change; the browser stream sends snapshots when it moves
        self.lock = threading.Lock()
        for machine in machines:
            for reading in machine.readings.values():
                reading.trend = deque(maxlen=trend_points)

    # --- building --------------------------------------------------------------------------------------

    @classmethod
    def from_entities(cls, entities: list[dict[str, Any]], line_id: str | None = None, *,
                      defect_window_ms: int = 300_000, defect_classes: list[str] | None = None,
                      trend_points: int = 600, source: str = "normalizer") -> Twin:
        lines = [e for e in entities if e.get("type") == "Line"]
        if not lines:
            raise ValueError("the asset graph has no Line entity")
        line = next((e for e in lines if line_id and e["id"].endswith(f":{line_id}")), lines[0])
        line_urn = line["id"]
        line_suffix = line_urn.rsplit(":", 1)[-1]
        sensors: dict[str, list[dict[str, Any]]] = {}
        for e in entities:
            if e.get("type") == "Sensor":
                sensors.setdefault(_value(e.get("isSensorOf")), []).append(e)
        machines: dict[str, MachineState] = {}
        for e in entities:
            if e.get("type") != "Machine" or _value(e.get("partOf")) != line_urn:
                continue
            machine = MachineState(
                entity_id=e["id"], machine_id=e["id"].rsplit(":", 1)[-1].removeprefix(f"{line_suffix}-"),
                name=str(_value(e.get("name")) or e["id"]), machine_type=str(_value(e.get("machineType")) or ""),
                feeds=_as_list(_value(e.get("feeds"))), affects=_as_list(_value(e.get("affects"))))
            for sensor in sensors.get(e["id"], []):
                attribute = _value(sensor.get("observes"))
                normal = _value(sensor.get("normalRange"))
                machine.readings[attribute] = Reading(
                    attribute, _value(sensor.get("unitCode")),
                    (float(normal["min"]), float(normal["max"])) if isinstance(normal, dict) else None)
            machine.inspects = machine.machine_type == "Detector"
            # the latest values the normalizer already holds (attributes beyond the structural ones)
            for name, attr in e.items():
                if isinstance(attr, dict) and attr.get("type") == "Property" and "observedAt" in attr:
                    machine.readings.setdefault(name, Reading(name, attr.get("unitCode")))
                    machine.readings[name].value = attr.get("value")
                    if name == "state":
                        machine.state = attr.get("value")
            machines[e["id"]] = machine
        ordered = flow_order(list(machines.values()))
        return cls(line_suffix, str(_value(line.get("name")) or line_suffix), ordered, defect_window_ms=defect_window_ms,
                   defect_classes=defect_classes or [], trend_points=trend_points, source=source)

    # --- folding live records ----------------------------------------------------------------------------

    def fold(self, kind: str, value: dict[str, Any]) -> bool:
        """Fold one unified record in; True when something the operator sees changed."""
        if value.get("line_id") != self.line_id:
            return False
        with self.lock:
            changed = getattr(self, f"_fold_{kind}")(value)
            if changed:
                self.version += 1
            return changed

    def _fold_observations(self, value: dict[str, Any]) -> bool:
        machine = self.machines.get(value.get("entity_id", ""))
        if machine is None:
            return False
        attribute = value["attribute"]
        at = int(value["observed_at"])
        reading = machine.readings.get(attribute)
        if reading is None:
            reading = machine.readings[attribute] = Reading(attribute, value.get("unit_code"))
            reading.trend = deque(maxlen=self.trend_points)
        if reading.observed_at is not None and at < reading.observed_at:
            return False  # an older reading (replay, another partition) never overwrites a newer one
        reading.value = value.get("value")
        reading.observed_at = at
        reading.unit = reading.unit or value.get("unit_code")
        if isinstance(reading.value, (int, float)) and not isinstance(reading.value, bool):
            reading.trend.append((at, reading.value))
        machine.last_seen = max(machine.last_seen or 0, at)
        if attribute == "state" and reading.value != machine.state:
            machine.state = reading.value
            machine.state_since = at
        return True

    def _fold_alarms(self, value: dict[str, Any]) -> bool:
        machine = self.machines.get(value.get("entity_id", ""))
        if machine is None:
            return False
        if value.get("state") == "active":
            machine.alarms[value["alarm_id"]] = {k: value.get(k) for k in (
                "alarm_id", "alarm_type", "severity", "message", "raised_at", "raise_count")}
        else:
            machine.alarms.pop(value["alarm_id"], None)
        return True

    def _fold_inspections(self, value: dict[str, Any]) -> bool:
        machine = self.machines.get(value.get("station_entity_id", ""))
        if machine is None:
            return False
        at = int(value.get("captured_at") or value.get("inspected_at") or 0)
        classes = tuple(d["defect_class"] for d in value.get("defects") or ())
        machine.inspects = True
        if value.get("verdict") == "abstained":  # not judged: neither good nor defective, not in the rates
            return True
        machine.inspections.append((at, classes))
        horizon = max(at, max((a for a, _ in machine.inspections), default=at)) - self.defect_window_ms
        while machine.inspections and machine.inspections[0][0] < horizon:
            machine.inspections.popleft()
        return True

    # --- reading ---------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"line_id": self.line_id, "line_name": self.line_name, "version": self.version,
                    "source": self.source,
                    "machines": [self.machines[eid].to_dict(self.defect_classes) for eid in self.order]}

    def trends(self, machine_id: str, since_ms: int | None = None) -> dict[str, Any] | None:
        with self.lock:
            machine = next((m for m in self.machines.values() if machine_id in (m.machine_id, m.entity_id)), None)
            if machine is None:
                return None
            series = {}
            for reading in machine.readings.values():
                points = [p for p in reading.trend if since_ms is None or p[0] >= since_ms]
                if points:
                    series[reading.attribute] = {"unit": reading.unit, "normal": reading.normal,
                                                 "points": points}
            return {"entity_id": machine.entity_id, "name": machine.name, "series": series}


def flow_order(machines: list[MachineState]) -> list[MachineState]:
    """Machines in material-flow order (`feeds`, a topological sort, ties in declaration order); machines that
    only `affect` the line (the hall environment) come last."""
    by_id = {m.entity_id: m for m in machines}
    incoming = {m.entity_id: 0 for m in machines}
    for m in machines:
        for target in m.feeds:
            if target in incoming:
                incoming[target] += 1
    in_flow = {m.entity_id for m in machines if m.feeds} | {t for m in machines for t in m.feeds}
    ready = [m.entity_id for m in machines if incoming[m.entity_id] == 0 and m.entity_id in in_flow]
    ordered: list[str] = []
    while ready:
        current = ready.pop(0)
        ordered.append(current)
        for target in by_id[current].feeds:
            if target in incoming:
                incoming[target] -= 1
                if incoming[target] == 0:
                    ready.append(target)
    rest = [m.entity_id for m in machines if m.entity_id not in ordered]
    return [by_id[eid] for eid in ordered + rest]
