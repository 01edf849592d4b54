"""The deterministic analysis of one line window against the plant model.

Layer 1 of the advisor's reasoning (DESIGN.md): findings with the numbers behind them, the upstream walk from
a symptom at the inspection station to candidate causes, and a ranking that names the root cause and the action
the plant model allows. Everything here is pure Python and depends only on the window, the line's history and
the plant model, so the same window always gives the same analysis (recommendation ids and the recovery test
rely on that).

Findings (each has a stable id such as `range:oven.zone2_temperature:high`):
- `range`     an attribute's current level outside its normal range;
- `setpoint`  a controlled attribute away from its setpoint;
- `trend`     an attribute moving fast through the window;
- `state`     a machine in state fault or stopped;
- `silence`   a machine or an inspection station that stopped reporting;
- `alarm`     a critical alarm active at the end of the window; `alarm_burst` many raises in one window;
- `defect_rate` a defect class well above its background rate at a station.

Ranking: a machine in fault explains what happens downstream of it; an attribute that the cause table links to
a defect class that is elevated explains that defect; an attribute out of range on a known cause explains what
has not yet reached the camera; a controlled attribute that reads high while nothing else (product, heater
power) shows the heat is a sensor fault, not a process one.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from lineguard.plant import Line, Machine, PlantModel, Sensor, Setpoint
from services.advisor.window import AttributeStats, LineHistory, LineWindow

SEVERITY_ORDER = ("info", "warning", "minor", "major", "critical")


@dataclass(frozen=True)
class Thresholds:
    defect_rate: float = 0.05  # a class at or above this share of items is a finding (background ~0.5%)
    defect_min_count: int = 5
    setpoint_fraction: float = 0.2  # deviation from setpoint, as a share of the normal range's width
    trend_fraction: float = 0.3  # change over the window, as a share of the normal range's width
    trend_min_count: int = 5
    silence_after_ms: int = 90_000  # at least this long without a reading (and 3 usual intervals)
    alarm_burst: int = 5  # raises in one window
    corroboration_fraction: float = 0.2  # a corroborating attribute this far above its normal midpoint


@dataclass(frozen=True)
class Cause:
    """Domain knowledge of the line, the same as the troubleshooting matrix in the SOPs: which attribute moving
    which way causes which defect, and what kind of problem it is."""

    defect: str
    machine_type: str
    attribute: str  # fnmatch pattern
    direction: str  # high | low
    category: str


CAUSES: tuple[Cause, ...] = (
    Cause("burnt", "Oven", "zone*_temperature", "high", "process_deviation"),
    Cause("deformed", "Mixer", "torque", "low", "equipment_fault"),
    Cause("bubbled", "Environment", "humidity", "high", "environment"),
    Cause("cracked", "Conveyor", "air_temperature", "low", "equipment_fault"),
)

# A controlled attribute that reads high is real heat only if these move with it (otherwise the sensor lies).
CORROBORATION: dict[tuple[str, str], tuple[str, ...]] = {
    ("Oven", "zone*_temperature"): ("heater_power",),
}

# Attributes that measure the flow of product: they are symptoms of a problem upstream, never its root cause.
FLOW_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "Detector": ("items_per_minute",),
    "Packager": ("packs", "rejects", "mean_pack_weight"),
}


@dataclass
class Finding:
    id: str
    kind: str
    entity_id: str
    machine_id: str
    description: str
    attribute: str | None = None
    value: float | None = None
    unit_code: str | None = None
    direction: str | None = None  # high | low for range/setpoint/trend findings
    numbers: dict[str, float] = field(default_factory=dict)

    def evidence(self) -> dict[str, Any]:
        """The finding as a recommendation's Evidence record."""
        return {"finding_id": self.id, "entity_id": self.entity_id, "attribute": self.attribute,
                "value": None if self.value is None else round(float(self.value), 3),
                "unit_code": self.unit_code, "description": self.description}

    def to_dict(self) -> dict[str, Any]:
        return {**self.evidence(), "kind": self.kind, "machine_id": self.machine_id, "direction": self.direction,
                "numbers": {k: round(v, 3) for k, v in self.numbers.items()}}


@dataclass
class ProposedAction:
    machine_id: str
    machine_entity_id: str
    parameter: str
    value: float
    current: float
    unit_code: str | None
    reason: str

    @property
    def direction(self) -> str:
        return "increase" if self.value > self.current else "decrease"

    def to_record(self) -> dict[str, Any]:
        return {"machine_entity_id": self.machine_entity_id, "parameter": self.parameter,
                "value": round(self.value, 3), "unit_code": self.unit_code, "reason": self.reason}


@dataclass
class Candidate:
    machine_id: str
    entity_id: str
    score: float
    finding_ids: list[str]
    why: str
    category: str


@dataclass
class Analysis:
    line_id: str
    window_start: int
    window_end: int
    findings: list[Finding]
    candidates: list[Candidate]
    category: str
    severity: str
    title: str
    summary: str
    root_cause_entity: str | None
    root_cause_machine: str | None
    root_cause_text: str
    cited: list[str]  # finding ids that support the conclusion, strongest first
    steps: list[str]
    actions: list[ProposedAction]
    safety_notes: list[str]
    compliance_notes: list[str]

    def finding(self, finding_id: str) -> Finding | None:
        return next((f for f in self.findings if f.id == finding_id), None)

    @property
    def finding_ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def query_terms(self) -> str:
        """Words for the document retriever: what went wrong, where, and the lead findings; empty when nothing is
        wrong (a normal window cites no manual)."""
        if self.category == "none":
            return ""
        words = [self.title, self.root_cause_text, self.category.replace("_", " ")]
        for finding in [self.finding(i) for i in self.cited[:2]]:
            if finding is not None:
                words += [finding.machine_id.replace("-", " "), (finding.attribute or "").replace("_", " "),
                          finding.direction or ""]
        return " ".join(w for w in words if w)

    def to_dict(self) -> dict[str, Any]:
        return {
            "line_id": self.line_id, "window_start": self.window_start, "window_end": self.window_end,
            "category": self.category, "severity": self.severity, "title": self.title, "summary": self.summary,
            "root_cause": {"entity_id": self.root_cause_entity, "machine_id": self.root_cause_machine,
                           "description": self.root_cause_text},
            "findings": [f.to_dict() for f in self.findings], "cited": list(self.cited),
            "steps": list(self.steps), "proposed_actions": [a.to_record() for a in self.actions],
            "safety_notes": list(self.safety_notes), "compliance_notes": list(self.compliance_notes),
        }


def _fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


class Analyzer:
    """Analyses windows of the lines of one plant model."""

    def __init__(self, plant: PlantModel, thresholds: Thresholds | None = None) -> None:
        self.plant = plant
        self.graph = plant.graph()
        self.thresholds = thresholds or Thresholds()
        self._machine_by_entity: dict[str, Machine] = {m.entity_id: m for m in plant.machines()}

    # --- findings ------------------------------------------------------------------------------------------

    def findings(self, window: LineWindow, history: LineHistory | None = None,
                 setpoints: dict[tuple[str, str], float] | None = None) -> list[Finding]:
        line = self._line(window.line_id)
        out: list[Finding] = []
        minutes = max(1e-9, (window.end_ms - window.start_ms) / 60_000)
        for machine in line.machines.values():
            declared = {sensor.attribute for sensor in machine.sensors}
            # Derived data points (plant model): every machine's run state and its setpoint values.
            for sensor in getattr(machine, "all_sensors", lambda m=machine: m.sensors)():
                if sensor.kind != "state" and sensor.attribute not in declared:
                    continue  # a setpoint's current value: used as the setpoint, not judged as a reading
                if sensor.kind == "state":
                    state = window.state(machine.entity_id, sensor.attribute)
                    if state is not None and state.last in ("fault", "stopped"):
                        out.append(Finding(
                            f"state:{machine.id}.{sensor.attribute}:{state.last}", "state", machine.entity_id,
                            machine.id, f"{machine.name} is in state {state.last!r} at the end of the window "
                            f"({state.counts.get(state.last, 0)} of {sum(state.counts.values())} readings)",
                            attribute=sensor.attribute, direction=state.last,
                            numbers={"readings_in_state": float(state.counts.get(state.last, 0))}))
                    continue
                stats = window.attribute(machine.entity_id, sensor.attribute)
                if stats is None or stats.count == 0:
                    continue
                out += self._numeric_findings(machine, sensor, stats, minutes, setpoints)
        out += self._silence_findings(line, window, history)
        out += self._alarm_findings(window)
        out += self._defect_findings(line, window)
        return out

    def _numeric_findings(self, machine: Machine, sensor: Sensor, stats: AttributeStats, minutes: float,
                          setpoints: dict[tuple[str, str], float] | None) -> list[Finding]:
        th = self.thresholds
        out: list[Finding] = []
        level = stats.recent
        unit = sensor.unit or stats.unit_code
        numbers = {"recent": level, "mean": stats.mean, "min": stats.min, "max": stats.max, "last": stats.last,
                   "count": float(stats.count), "trend_per_min": stats.trend_per_min}
        normal = sensor.normal
        width = (normal.max - normal.min) if normal else 0.0
        if normal is not None:
            for direction, outside, limit in (("high", level > normal.max, normal.max),
                                              ("low", level < normal.min, normal.min)):
                if outside:
                    out.append(Finding(
                        f"range:{machine.id}.{sensor.attribute}:{direction}", "range", machine.entity_id,
                        machine.id,
                        f"{machine.name} {sensor.attribute} is {_fmt(level)} {unit or ''}, {direction}er than its "
                        f"normal {'maximum' if direction == 'high' else 'minimum'} {_fmt(limit)} "
                        f"(window mean {_fmt(stats.mean)}, min {_fmt(stats.min)}, max {_fmt(stats.max)})",
                        attribute=sensor.attribute, value=level, unit_code=unit, direction=direction,
                        numbers={**numbers, "limit": limit, "excess_fraction": abs(level - limit) / max(width, 1e-9)}))
        if sensor.setpoint:
            setpoint = machine.setpoints[sensor.setpoint]
            target = (setpoints or {}).get((machine.id, sensor.setpoint), setpoint.default)
            offset = level - target
            if width and abs(offset) > th.setpoint_fraction * width:
                direction = "high" if offset > 0 else "low"
                out.append(Finding(
                    f"setpoint:{machine.id}.{sensor.attribute}:{direction}", "setpoint", machine.entity_id,
                    machine.id,
                    f"{machine.name} {sensor.attribute} reads {_fmt(level)} {unit or ''} against its setpoint "
                    f"{sensor.setpoint}={_fmt(target)}: {_fmt(abs(offset))} {direction}",
                    attribute=sensor.attribute, value=level, unit_code=unit, direction=direction,
                    numbers={**numbers, "setpoint": target, "offset": offset}))
        if width and stats.count >= th.trend_min_count:
            change = stats.trend_per_min * minutes
            if abs(change) > th.trend_fraction * width:
                direction = "high" if change > 0 else "low"
                out.append(Finding(
                    f"trend:{machine.id}.{sensor.attribute}:{'rising' if change > 0 else 'falling'}", "trend",
                    machine.entity_id, machine.id,
                    f"{machine.name} {sensor.attribute} is {'rising' if change > 0 else 'falling'} "
                    f"{_fmt(abs(stats.trend_per_min))} {unit or ''}/min (from {_fmt(stats.first)} to "
                    f"{_fmt(stats.last)} in the window)",
                    attribute=sensor.attribute, value=stats.trend_per_min, unit_code=unit, direction=direction,
                    numbers={**numbers, "change": change}))
        return out

    def _silence_findings(self, line: Line, window: LineWindow, history: LineHistory | None) -> list[Finding]:
        th = self.thresholds
        out: list[Finding] = []
        last_seen = dict(history.last_seen) if history else {}
        intervals = dict(history.interval_ms) if history else {}
        for entity, (_, last_at, _reports) in window.entities.items():
            last_seen[entity] = max(last_seen.get(entity, 0), last_at)
        for station in window.stations.values():
            key = f"station:{station.station}"
            last_seen[key] = max(last_seen.get(key, 0), station.last_at)
        for machine in line.machines.values():
            keys = [machine.entity_id] + ([f"station:{machine.id}"] if machine.inspects else [])
            for key in keys:
                seen_at = last_seen.get(key)
                if seen_at is None:
                    continue  # never heard of: not silent, just not reporting yet
                count = window.entities.get(key, [0, 0, 0])[2] if not key.startswith("station:") else (
                    window.stations[machine.id].items if machine.id in window.stations else 0)
                usual = intervals.get(key) or ((window.end_ms - window.start_ms) / count if count >= 2 else 0.0)
                if not usual:
                    continue  # reported once so far: how often it reports is not known yet
                allowed = max(th.silence_after_ms, 3 * usual)
                quiet_ms = window.end_ms - seen_at
                if quiet_ms > allowed:
                    what = "inspections" if key.startswith("station:") else "readings"
                    out.append(Finding(
                        f"silence:{machine.id}:{what}", "silence", machine.entity_id, machine.id,
                        f"{machine.name} sent no {what} for the last {quiet_ms / 1000:.0f} s of the window "
                        f"(usually every {max(usual, 1000) / 1000:.0f} s)",
                        value=quiet_ms / 1000, unit_code="SEC", direction="low",
                        numbers={"quiet_s": quiet_ms / 1000, "usual_interval_s": usual / 1000}))
        return out

    def _alarm_findings(self, window: LineWindow) -> list[Finding]:
        out: list[Finding] = []
        raises = 0
        for alarm in sorted(window.alarms.values(), key=lambda a: a.alarm_id):
            raises += alarm.raises
            if alarm.active and alarm.severity == "critical":
                machine = self._machine_by_entity.get(alarm.entity_id)
                machine_id = machine.id if machine else alarm.entity_id.rsplit(":", 1)[-1]
                out.append(Finding(
                    f"alarm:{machine_id}:{alarm.alarm_type}", "alarm", alarm.entity_id, machine_id,
                    f"critical alarm {alarm.alarm_type} on {machine.name if machine else alarm.entity_id} is active"
                    + (f": {alarm.message}" if alarm.message else ""),
                    attribute=None, numbers={"raises": float(alarm.raises)}))
        if raises >= self.thresholds.alarm_burst:
            line = self.plant.lines[window.line_id]
            out.append(Finding(
                "alarm_burst:line", "alarm_burst", line.entity_id, "line",
                f"{raises} alarm raises in the window across {len(window.alarms)} alarms",
                value=float(raises), unit_code="C62", numbers={"raises": float(raises)}))
        return out

    def _defect_findings(self, line: Line, window: LineWindow) -> list[Finding]:
        th = self.thresholds
        out: list[Finding] = []
        for station in sorted(window.stations.values(), key=lambda s: s.station):
            machine = line.machines.get(station.station)
            machine_id = machine.id if machine else station.station
            for defect_class in sorted(station.by_class):
                count = station.by_class[defect_class]
                rate = station.rate(defect_class)
                if rate >= th.defect_rate and count >= th.defect_min_count:
                    out.append(Finding(
                        f"defect_rate:{machine_id}:{defect_class}", "defect_rate", station.entity_id, machine_id,
                        f"{count} of {station.items} items at the {machine_id} were {defect_class} "
                        f"({rate * 100:.1f}%, background below 2%)",
                        attribute=defect_class, value=rate * 100, unit_code="P1", direction="high",
                        numbers={"rate": rate, "count": float(count), "items": float(station.items)}))
        return out

    # --- ranking -------------------------------------------------------------------------------------------

    @staticmethod
    def reported_setpoints(window: LineWindow, line: Line) -> dict[tuple[str, str], float]:
        """The setpoints the machines reported in the window (the plant model's derived data points:
        `<parameter>`, or `<parameter>_setpoint` where a sensor has the parameter's name): the latest value."""
        out: dict[tuple[str, str], float] = {}
        for machine in line.machines.values():
            taken = {s.attribute for s in machine.sensors}
            for parameter in machine.setpoints:
                stats = window.attribute(machine.entity_id,
                                         parameter if parameter not in taken else f"{parameter}_setpoint")
                if stats is not None and stats.count:
                    out[(machine.id, parameter)] = stats.last
        return out

    def analyse(self, window: LineWindow, history: LineHistory | None = None,
                setpoints: dict[tuple[str, str], float] | None = None) -> Analysis:
        line = self._line(window.line_id)
        # Actions start from the setpoint the machine reports now; an explicit override wins; else the recipe.
        setpoints = {**self.reported_setpoints(window, line), **(setpoints or {})}
        findings = self.findings(window, history, setpoints)
        by_id = {f.id: f for f in findings}
        defect_rates = {f.attribute: f for f in findings if f.kind == "defect_rate"}
        candidates: list[Candidate] = []
        sensor_faults: list[Finding] = []

        for finding in findings:
            machine = line.machines.get(finding.machine_id)
            if machine is None:
                continue
            if finding.kind == "state":
                candidates.append(Candidate(machine.id, machine.entity_id, 90.0, [finding.id],
                                            f"{machine.name} is in {finding.direction}", "equipment_fault"))
                continue
            if finding.kind != "range" or finding.attribute in FLOW_ATTRIBUTES.get(machine.type, ()):
                continue
            cause = self._cause(machine, finding.attribute or "", finding.direction or "")
            if (cause is not None and cause.direction == "high" and self._needs_corroboration(machine, cause)
                    and not self._heat_is_real(window, machine, cause, defect_rates)):
                sensor_faults.append(finding)
                continue
            score = 40.0 + 10.0 * min(1.0, finding.numbers.get("excess_fraction", 0.0))
            category = "equipment_fault"
            why = finding.description
            if cause is not None:
                category = cause.category
                defect = defect_rates.get(cause.defect)
                score = 60.0 + 10.0 * min(1.0, finding.numbers.get("excess_fraction", 0.0))
                if defect is not None:
                    score = 80.0 + 10.0 * min(1.0, defect.numbers["rate"])
                    why = f"{finding.description}; this causes {cause.defect} cookies ({defect.description})"
            ids = [finding.id] + ([defect_rates[cause.defect].id] if cause and cause.defect in defect_rates else [])
            candidates.append(Candidate(machine.id, machine.entity_id, score, ids, why, category))

        # Prefer the strongest; between equals, the machine furthest upstream (it explains the others).
        order = self._upstream_order(line)
        candidates.sort(key=lambda c: (-c.score, -order.get(c.machine_id, 0), c.machine_id))
        merged: dict[str, Candidate] = {}
        for candidate in candidates:
            if candidate.machine_id in merged:
                merged[candidate.machine_id].finding_ids += [i for i in candidate.finding_ids
                                                             if i not in merged[candidate.machine_id].finding_ids]
            else:
                merged[candidate.machine_id] = candidate
        ranked = list(merged.values())

        if ranked:
            top = ranked[0]
            return self._conclude(line, window, findings, ranked, top, by_id, defect_rates, setpoints)
        if sensor_faults:
            return self._sensor_fault(line, window, findings, sensor_faults[0], setpoints)
        unexplained = [f for f in findings if f.kind in ("defect_rate", "silence", "alarm")]
        if unexplained:
            return self._quality_only(line, window, findings, unexplained)
        return Analysis(
            window.line_id, window.start_ms, window.end_ms, findings, [], "none", "info",
            f"{line.name}: running normally", "No reading is outside its normal range, no machine is silent and "
            "defects stay at their background rate. No action.", None, None, "Nothing is wrong.",
            [f.id for f in findings], ["No action. Keep the line on its recipe setpoints."], [], [], [])

    def _conclude(self, line: Line, window: LineWindow, findings: list[Finding], ranked: list[Candidate],
                  top: Candidate, by_id: dict[str, Finding], defect_rates: dict[str | None, Finding],
                  setpoints: dict[tuple[str, str], float] | None) -> Analysis:
        machine = line.machines[top.machine_id]
        lead = by_id[top.finding_ids[0]]
        actions: list[ProposedAction] = []
        steps: list[str] = []
        safety: list[str] = []
        compliance: list[str] = []
        cited = list(top.finding_ids)
        # What the top cause explains downstream: silence, flow, defects, alarms.
        downstream = set(self.graph.downstream(machine.entity_id)) | {machine.entity_id}
        for finding in findings:
            if finding.id in cited:
                continue
            if finding.entity_id in downstream or finding.kind == "alarm_burst":
                cited.append(finding.id)
        if lead.kind == "state":
            title = f"{machine.name} stopped ({lead.direction}): nothing reaches the stations after it"
            root = (f"The {machine.name.lower()} is in state {lead.direction!r}: it stopped on a drive trip, so no "
                    f"product reaches the machines after it.")
            steps = [f"Check the {machine.name.lower()} for a jam, an open guard or a tripped drive.",
                     f"Clear the cause, then start the {machine.name.lower()} again through the line controller.",
                     "Confirm that items reach the detector again and the alarm clears."]
            safety = ["Lock out and tag out the drive before reaching into the conveyor (LOTO)."]
            compliance = ["Product held on the stopped belt or diverted to scrap must not be packed; log it."]
        else:
            attr = lead.attribute or ""
            cause = self._cause(machine, attr, lead.direction or "")
            root = lead.description
            title = f"{machine.name}: {attr.replace('_', ' ')} {lead.direction}"
            if cause is not None:
                defect = defect_rates.get(cause.defect)
                title += f", {cause.defect} cookies" if defect else f" (expect {cause.defect} cookies)"
                root = self._root_text(machine, attr, lead, cause)
            actions, steps, safety, compliance = self._playbook(line, machine, lead, setpoints)
        severity = self._severity(findings, top, defect_rates)
        summary = self._summary(findings, cited, by_id)
        return Analysis(window.line_id, window.start_ms, window.end_ms, findings, ranked, top.category, severity,
                        title, summary, machine.entity_id, machine.id, root, cited, steps, actions, safety,
                        compliance)

    def _sensor_fault(self, line: Line, window: LineWindow, findings: list[Finding], lead: Finding,
                      setpoints: dict[tuple[str, str], float] | None) -> Analysis:
        machine = line.machines[lead.machine_id]
        sensor = machine.sensor(lead.attribute or "")
        cited = [lead.id] + [f.id for f in findings if f.id != lead.id and f.entity_id == machine.entity_id
                             and f.attribute == lead.attribute]
        corroborating = ", ".join(self._corroborating_attributes(machine, lead.attribute or "")) or "other readings"
        root = (f"The {lead.attribute} sensor on the {machine.name.lower()} is faulty: it reads "
                f"{_fmt(lead.value or 0.0)} {lead.unit_code or ''} while {corroborating} and the product show no "
                f"sign of it.")
        steps = [f"Do not change the {machine.name.lower()} setpoints: the product and {corroborating} are normal.",
                 f"Verify {lead.attribute.replace('_', ' ') if lead.attribute else 'the reading'} with a reference "
                 "probe.",
                 f"Replace or recalibrate the {(lead.attribute or 'faulty').replace('_', ' ')} sensor"
                 f"{' (' + sensor.id.rsplit(':', 1)[-1] + ')' if sensor else ''}."]
        severity = "major" if any(f.kind == "alarm" for f in findings) else "minor"
        return Analysis(
            window.line_id, window.start_ms, window.end_ms, findings, [], "sensor_fault", severity,
            f"{machine.name}: {lead.attribute} sensor reads {lead.direction}, the process is normal",
            self._summary(findings, cited, {f.id: f for f in findings}), machine.entity_id, machine.id, root, cited,
            steps, [], ["Use a calibrated reference probe; the oven is hot, wear heat-resistant gloves."],
            ["Record the sensor fault and the reference readings in the HACCP oven log."])

    def _quality_only(self, line: Line, window: LineWindow, findings: list[Finding],
                      unexplained: list[Finding]) -> Analysis:
        lead = unexplained[0]
        category = "quality" if lead.kind == "defect_rate" else "equipment_fault"
        severity = "major" if lead.kind in ("defect_rate", "alarm") else "minor"
        machine = line.machines.get(lead.machine_id)
        return Analysis(
            window.line_id, window.start_ms, window.end_ms, findings, [], category, severity,
            f"{line.name}: {lead.description}", self._summary(findings, [f.id for f in unexplained],
                                                              {f.id: f for f in findings}),
            machine.entity_id if machine else None, machine.id if machine else None,
            "No upstream reading explains it yet; inspect the station and the machines before it.",
            [f.id for f in unexplained], [
                f"Inspect the {lead.machine_id} and the machines upstream of it.",
                "Take samples of the product and check them by hand."], [], [], [])

    # --- playbook ------------------------------------------------------------------------------------------

    def _playbook(self, line: Line, machine: Machine, lead: Finding, setpoints: dict[tuple[str, str], float] | None
                  ) -> tuple[list[ProposedAction], list[str], list[str], list[str]]:
        attr, direction = lead.attribute or "", lead.direction or ""
        actions: list[ProposedAction] = []
        if machine.type == "Oven" and fnmatch.fnmatch(attr, "zone*_temperature") and direction == "high":
            sensor = machine.sensor(attr)
            parameter = sensor.setpoint if sensor and sensor.setpoint else attr.replace("_temperature", "_setpoint")
            setpoint = machine.setpoints.get(parameter)
            if setpoint is not None:
                current = self._current(setpoints, machine.id, parameter, setpoint)
                offset = (lead.value or current) - current
                action = self._bounded(machine, setpoint, current, current - max(offset, 0.0),
                                       f"{attr} runs {_fmt(offset)} C over its setpoint; lowering the setpoint by "
                                       f"the offset brings the real heat back to the recipe")
                if action:
                    actions.append(action)
            return actions, [
                f"Lower {parameter} towards the recipe heat, in steps no larger than "
                f"{_fmt(setpoint.max_step) if setpoint else '15'} C, watching burnt cookies at the detector.",
                "Call maintenance to inspect the zone's burner gas valve.",
                "Hold and re-inspect cookies baked since the zone went hot."], [
                "Do not open the oven inspection doors while the zone is over temperature."], [
                "HACCP: segregate burnt product and record the deviation and the corrective action."]
        if machine.type == "Mixer" and attr == "torque" and direction == "low":
            setpoint = machine.setpoints.get("speed")
            if setpoint is not None:
                current = self._current(setpoints, machine.id, "speed", setpoint)
                action = self._bounded(machine, setpoint, current, current + setpoint.max_step,
                                       f"torque {_fmt(lead.value or 0)} Nm is below its normal minimum; more speed "
                                       "restores the mixing work")
                if action:
                    actions.append(action)
            return actions, [
                "Raise the mixer speed by one step to restore the mixing work and the dough torque.",
                "Have maintenance tension or replace the mixer drive belt.",
                "Check that deformed cookies at the detector fall back to their background rate."], [
                "Lock out the mixer before opening the drive guard."], [
                "Deformed product is out of specification: segregate it."]
        if machine.type == "Environment" and attr == "humidity" and direction == "high":
            mixer = next((m for m in line.machines.values() if m.type == "Mixer"), None)
            setpoint = mixer.setpoints.get("water_ratio") if mixer else None
            if mixer is not None and setpoint is not None:
                current = self._current(setpoints, mixer.id, "water_ratio", setpoint)
                action = self._bounded(mixer, setpoint, current, current - setpoint.max_step,
                                       f"hall humidity {_fmt(lead.value or 0)}% adds moisture to the dough; less "
                                       "water in the recipe offsets it")
                if action:
                    actions.append(action)
            return actions, [
                "Lower the mixer water ratio by one step to offset the moisture the dough takes from the air.",
                "Restore the hall's humidity control: close doors, check the HVAC dehumidifier.",
                "Raise the water ratio back to the recipe once the humidity is back in range."], [], [
                "Record the recipe change and the humidity readings in the batch record."]
        if machine.type == "Conveyor" and attr == "air_temperature" and direction == "low":
            return [], [
                "Call maintenance to reset the cooling conveyor's chiller to its 19 C air setpoint.",
                "No line setpoint compensates for over-cooling; do not change the oven or mixer.",
                "Hold cracked product for inspection."], [
                "Chiller refrigerant circuits are serviced by certified technicians only."], [
                "Cracked product is out of specification: segregate it."]
        return [], [f"Inspect the {machine.name.lower()}: {lead.description}.",
                    "Call maintenance if the reading does not return to its normal range."], [], []

    @staticmethod
    def _root_text(machine: Machine, attribute: str, lead: Finding, cause: Cause) -> str:
        level = f"{_fmt(lead.value or 0.0)} {lead.unit_code or ''}".strip()
        if machine.type == "Oven":
            return (f"{machine.name} {attribute.replace('_temperature', '')} runs hot ({level}, over its setpoint "
                    f"and normal range); the extra bake heat burns the cookies.")
        if machine.type == "Mixer":
            return (f"The {machine.name.lower()}'s torque is low ({level}): the drive is slipping, so the dough is "
                    "under-developed and the cookies deform.")
        if machine.type == "Environment":
            return (f"High hall humidity ({level}) adds moisture to the dough; the excess moisture turns to steam "
                    "in the oven and blisters (bubbles) the cookies.")
        if machine.type == "Conveyor":
            return (f"The cooling air is far too cold ({level}); cookies cooled that fast crack. The chiller's "
                    "control has failed.")
        return f"{lead.description}; this causes {cause.defect} product."

    @staticmethod
    def _current(setpoints: dict[tuple[str, str], float] | None, machine_id: str, parameter: str,
                 setpoint: Setpoint) -> float:
        return (setpoints or {}).get((machine_id, parameter), setpoint.default)

    @staticmethod
    def _bounded(machine: Machine, setpoint: Setpoint, current: float, target: float, reason: str
                 ) -> ProposedAction | None:
        """The target moved no further than one allowed step and kept within the limits; None if no move is left."""
        step = max(-setpoint.max_step, min(setpoint.max_step, target - current))
        value = round(min(setpoint.max, max(setpoint.min, current + step)), 3)
        if abs(value - current) < 1e-9 or setpoint.check(value, current) is not None:
            return None
        if abs(target - value) > 1e-6:
            reason += f" (one step of at most {setpoint.max_step:g} towards {target:g})"
        return ProposedAction(machine.id, machine.entity_id, setpoint.parameter, value, current, setpoint.unit,
                              reason)

    # --- helpers -------------------------------------------------------------------------------------------

    def _line(self, line_id: str) -> Line:
        line = self.plant.lines.get(line_id)
        if line is None:
            raise KeyError(f"unknown line {line_id!r} (known: {', '.join(sorted(self.plant.lines))})")
        return line

    @staticmethod
    def _cause(machine: Machine, attribute: str, direction: str) -> Cause | None:
        return next((c for c in CAUSES if c.machine_type == machine.type and c.direction == direction
                     and fnmatch.fnmatch(attribute, c.attribute)), None)

    @staticmethod
    def _needs_corroboration(machine: Machine, cause: Cause) -> bool:
        return any(t == machine.type and p == cause.attribute for t, p in CORROBORATION)

    @staticmethod
    def _corroborating_attributes(machine: Machine, attribute: str) -> tuple[str, ...]:
        for (machine_type, pattern), attributes in CORROBORATION.items():
            if machine_type == machine.type and fnmatch.fnmatch(attribute, pattern):
                return attributes
        return ()

    def _heat_is_real(self, window: LineWindow, machine: Machine, cause: Cause,
                      defect_rates: dict[str | None, Finding]) -> bool:
        """The product (the defect the cause makes) or a corroborating reading shows the deviation is real."""
        if cause.defect in defect_rates:
            return True
        for attribute in self._corroborating_attributes(machine, cause.attribute.replace("*", "1")):
            sensor = machine.sensor(attribute)
            stats = window.attribute(machine.entity_id, attribute)
            if sensor is None or stats is None or sensor.normal is None:
                continue
            mid = (sensor.normal.min + sensor.normal.max) / 2
            width = sensor.normal.max - sensor.normal.min
            if stats.recent > mid + self.thresholds.corroboration_fraction * width:
                return True
        return False

    def _upstream_order(self, line: Line) -> dict[str, int]:
        """machine id -> how many machines are downstream of it (more = further upstream)."""
        return {m.id: len(self.graph.downstream(m.entity_id)) for m in line.machines.values()}

    @staticmethod
    def _severity(findings: list[Finding], top: Candidate, defect_rates: dict[str | None, Finding]) -> str:
        if any(f.kind in ("state", "alarm") for f in findings) or any(
                f.numbers.get("rate", 0.0) >= 0.5 for f in defect_rates.values()):
            return "critical"
        if defect_rates or top.score >= 60:
            return "major"
        return "minor"

    @staticmethod
    def _summary(findings: list[Finding], cited: list[str], by_id: dict[str, Finding]) -> str:
        parts = [by_id[i].description for i in cited[:4] if i in by_id]
        others = len(findings) - len(parts)
        text = "; ".join(parts) + "."
        if others > 0:
            text += f" {others} further finding{'s' if others > 1 else ''} in the window."
        return text


def worst_severity(a: str, b: str) -> str:
    return a if SEVERITY_ORDER.index(a) >= SEVERITY_ORDER.index(b) else b
