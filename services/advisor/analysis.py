"""The deterministic analysis of one line window against the plant model and its plant knowledge.

Layer 1 of the advisor's reasoning (DESIGN.md): findings with the numbers behind them, the independent causes
they point to (several at once when several things are wrong), each with only the evidence the asset graph and
the physics connect to it, and for each cause the action and steps its playbook allows. Everything here is pure
Python and depends only on the window, the line's history and the plant model (with `playbooks.yaml`, the
plant knowledge next to it), so the same window always gives the same analysis (recommendation ids and the
recovery test rely on that).

Findings (each has a stable id such as `range:oven.zone2_temperature:high`):
- `range`     an attribute's current level outside its normal range;
- `setpoint`  a controlled attribute away from its setpoint;
- `drift`     a controlled attribute creeping away from its setpoint: a CUSUM of its deviation over the last
              windows, or a deviation that grows at a rate that reaches the normal limit soon (with the projected
              time to the limit), reported while it is still small;
- `trend`     an attribute moving fast through the window;
- `state`     a machine in state fault or stopped;
- `silence`   a machine or an inspection station that stopped reporting;
- `alarm`     a critical alarm active at the end of the window; `alarm_burst` many raises in one window;
- `defect_rate` a defect class well above its background rate at a station.

Causes: every machine reading that deviates (range, setpoint or drift) is judged real or a sensor fault by the
declared corroboration model (the readings and product outcomes that must move with it when it is real): a
sensor fault only when the signals that should have moved measurably did not and the product is clean; real
when they moved or the product shows it; real too when nothing can tell yet (the safe side: a sensor verdict
forbids the setpoint change). A machine in fault or stopped is a cause of its own. Each cause then claims its
evidence: its own findings, its corroborating readings, the defect class its playbook says it makes at a
station downstream of it, its machine's alarms and, for a stopped machine, the silence after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from lineguard.plant import Line, Machine, PlantModel, Sensor, Setpoint, default_plant_path
from services.advisor.knowledge import (
    Knowledge,
    Playbook,
    default_knowledge_path,
    load_knowledge,
    render,
)
from services.advisor.window import AttributeStats, LineHistory, LineWindow

SEVERITY_ORDER = ("info", "warning", "minor", "major", "critical")
DEVIATION_KINDS = ("range", "setpoint", "drift")


@dataclass(frozen=True)
class Thresholds:
    defect_rate: float = 0.05  # a class at or above this share of items is a finding (background ~0.5%)
    defect_min_count: int = 5
    setpoint_fraction: float = 0.2  # deviation from setpoint, as a share of the normal range's width
    trend_fraction: float = 0.3  # change over the window, as a share of the normal range's width
    trend_min_count: int = 5
    silence_after_ms: int = 90_000  # at least this long without a reading (and 3 usual intervals)
    alarm_burst: int = 5  # raises in one window
    drift_fraction: float = 0.1  # a creeping deviation is reported from this share of the normal width...
    drift_rate_fraction: float = 0.01  # ...when it grows at least this share of the width per minute
    drift_horizon_min: float = 45.0  # ...and would reach the normal limit within this many minutes
    cusum_k: float = 0.04  # CUSUM allowance per window, as a share of the width
    cusum_h: float = 0.25  # CUSUM decision level, as a share of the width
    corroboration_ratio: float = 0.4  # a signal corroborates when it moved this share of what physics expects
    corroboration_floor: float = 0.02  # an expected move below this share of the signal's width proves nothing


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
    direction: str | None = None  # high | low for range/setpoint/trend/drift findings
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
    max_step: float = 0.0

    @property
    def direction(self) -> str:
        return "increase" if self.value > self.current else "decrease"

    def to_record(self) -> dict[str, Any]:
        return {"machine_entity_id": self.machine_entity_id, "parameter": self.parameter,
                "value": round(self.value, 3), "unit_code": self.unit_code, "reason": self.reason}


@dataclass(kw_only=True)
class RootCause:
    """One independent cause: where, what kind, the evidence that is its own, and what to do about it."""

    machine_id: str
    entity_id: str
    category: str
    score: float
    finding_ids: list[str]
    why: str
    kind: str = "process"  # process | sensor | stopped | quality
    attribute: str | None = None
    direction: str | None = None
    playbook: str | None = None
    title: str = ""
    text: str = ""
    steps: list[str] = field(default_factory=list)
    actions: list[ProposedAction] = field(default_factory=list)
    safety: list[str] = field(default_factory=list)
    compliance: list[str] = field(default_factory=list)
    verdict: str = ""  # how real-versus-sensor was decided, in words
    minutes_to_limit: float | None = None
    waiting: list[str] = field(default_factory=list)  # changes already made, waiting for their effect

    def to_dict(self) -> dict[str, Any]:
        return {"machine_id": self.machine_id, "entity_id": self.entity_id, "category": self.category,
                "kind": self.kind, "score": round(self.score, 2), "attribute": self.attribute,
                "direction": self.direction, "playbook": self.playbook, "title": self.title,
                "description": self.text, "finding_ids": list(self.finding_ids), "verdict": self.verdict,
                "minutes_to_limit": None if self.minutes_to_limit is None else round(self.minutes_to_limit, 1),
                "proposed_actions": [a.to_record() for a in self.actions], "steps": list(self.steps),
                "waiting": list(self.waiting)}


Candidate = RootCause  # the ranked causes are the candidates the upstream walk found


@dataclass(kw_only=True)
class Analysis:
    line_id: str
    window_start: int
    window_end: int
    findings: list[Finding]
    causes: list[RootCause] = field(default_factory=list)
    category: str = "none"
    severity: str = "info"
    title: str = ""
    summary: str = ""
    root_cause_entity: str | None = None
    root_cause_machine: str | None = None
    root_cause_text: str = ""
    cited: list[str] = field(default_factory=list)  # finding ids that support the conclusion, strongest first
    steps: list[str] = field(default_factory=list)
    actions: list[ProposedAction] = field(default_factory=list)
    safety_notes: list[str] = field(default_factory=list)
    compliance_notes: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)  # unit code -> symbol, for the text checks

    @property
    def candidates(self) -> list[RootCause]:
        return self.causes

    def finding(self, finding_id: str) -> Finding | None:
        return next((f for f in self.findings if f.id == finding_id), None)

    @property
    def finding_ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def cause_of(self, finding_id: str) -> RootCause | None:
        return next((c for c in self.causes if finding_id in c.finding_ids), None)

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
            "causes": [c.to_dict() for c in self.causes],
            "findings": [f.to_dict() for f in self.findings], "cited": list(self.cited),
            "steps": list(self.steps), "proposed_actions": [a.to_record() for a in self.actions],
            "safety_notes": list(self.safety_notes), "compliance_notes": list(self.compliance_notes),
            "waiting": list(self.waiting),
        }


def _fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def _words(attribute: str | None) -> str:
    return (attribute or "reading").replace("_", " ")


@dataclass
class Memory:
    """What was done on the line before this window (actions.v1, feedback.v1), as the analysis needs it.

    in_effect: (machine id, parameter) -> (value, applied or requested at ms, status) for changes applied or
    pending; such a change is not proposed again while its effect is due. rejected: (machine id, parameter,
    direction) -> the evidence signature the rejected proposal stood on; not proposed again unless the evidence
    changed. downvoted: playbook id -> down-votes with a reason on this line (lower that playbook's rank)."""

    in_effect: dict[tuple[str, str], tuple[float, int, str]] = field(default_factory=dict)
    rejected: dict[tuple[str, str, str], str] = field(default_factory=dict)
    downvoted: dict[str, int] = field(default_factory=dict)
    effect_ms: int = 600_000  # how long a change needs to show at the detector


class Analyzer:
    """Analyses windows of the lines of one plant model."""

    def __init__(self, plant: PlantModel, thresholds: Thresholds | None = None,
                 knowledge: Knowledge | None = None) -> None:
        self.plant = plant
        self.graph = plant.graph()
        self.thresholds = thresholds or Thresholds()
        if knowledge is None:
            source = plant.source if plant.source not in ("<memory>", "<plant>") else str(default_plant_path())
            path = default_knowledge_path(source)
            if not path.exists():
                path = default_knowledge_path(default_plant_path())
            knowledge = load_knowledge(path, plant)
        self.knowledge = knowledge
        self._machine_by_entity: dict[str, Machine] = {m.entity_id: m for m in plant.machines()}
        try:
            self.zone = ZoneInfo(plant.timezone)
        except (KeyError, ValueError):
            self.zone = ZoneInfo("UTC")

    def local_time(self, at_ms: int) -> str:
        """An event time as the plant reads it: local time with its zone (`09:05 CET`)."""
        moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(self.zone)
        return f"{moment:%H:%M} {moment.tzname()}"

    def _unit(self, code: str | None) -> str:
        return self.knowledge.symbol(code)

    def _q(self, value: float, code: str | None) -> str:
        """A quantity as the operator reads it: `230.4 °C`, `36.1 Nm`, `62.0%`."""
        unit = self._unit(code)
        if not unit:
            return _fmt(value)
        return f"{_fmt(value)}%" if unit == "%" else f"{_fmt(value)} {unit}"

    # --- findings ------------------------------------------------------------------------------------------

    def findings(self, window: LineWindow, history: LineHistory | None = None,
                 setpoints: dict[tuple[str, str], float] | None = None) -> list[Finding]:
        line = self._line(window.line_id)
        out: list[Finding] = []
        minutes = max(1e-9, (window.end_ms - window.start_ms) / 60_000)
        for machine in line.machines.values():
            declared = {sensor.attribute for sensor in machine.sensors}
            # Derived data points (plant model): every machine's run state and its setpoint values.
            for sensor in machine.all_sensors():
                if sensor.kind != "state" and sensor.attribute not in declared:
                    continue  # a setpoint's current value: used as the setpoint, not judged as a reading
                if sensor.kind == "state":
                    state = window.state(machine.entity_id, sensor.attribute)
                    if state is not None and state.last in ("fault", "stopped"):
                        out.append(Finding(
                            f"state:{machine.id}.{sensor.attribute}:{state.last}", "state", machine.entity_id,
                            machine.id, f"{machine.name} is in state {state.last} at the end of the window "
                            f"({state.counts.get(state.last, 0)} of {sum(state.counts.values())} readings)",
                            attribute=sensor.attribute, direction=state.last,
                            numbers={"readings_in_state": float(state.counts.get(state.last, 0))}))
                    continue
                stats = window.attribute(machine.entity_id, sensor.attribute)
                if stats is None or stats.count == 0:
                    continue
                out += self._numeric_findings(machine, sensor, stats, minutes, setpoints, history, window)
        out += self._silence_findings(line, window, history)
        out += self._alarm_findings(window)
        out += self._defect_findings(line, window)
        return out

    def _numeric_findings(self, machine: Machine, sensor: Sensor, stats: AttributeStats, minutes: float,
                          setpoints: dict[tuple[str, str], float] | None, history: LineHistory | None,
                          window: LineWindow) -> list[Finding]:
        th = self.thresholds
        out: list[Finding] = []
        level = stats.recent
        unit = sensor.unit or stats.unit_code
        q = self._q
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
                        f"{machine.name} {_words(sensor.attribute)} is {q(level, unit)}, {direction}er than its "
                        f"normal {'maximum' if direction == 'high' else 'minimum'} {q(limit, unit)} "
                        f"(window mean {q(stats.mean, unit)}, min {q(stats.min, unit)}, max {q(stats.max, unit)})",
                        attribute=sensor.attribute, value=level, unit_code=unit, direction=direction,
                        numbers={**numbers, "limit": limit, "excess_fraction": abs(level - limit) / max(width, 1e-9)}))
        target: float | None = None
        if sensor.setpoint:
            setpoint = machine.setpoints[sensor.setpoint]
            target = (setpoints or {}).get((machine.id, sensor.setpoint), setpoint.default)
            offset = level - target
            if width and abs(offset) > th.setpoint_fraction * width:
                direction = "high" if offset > 0 else "low"
                out.append(Finding(
                    f"setpoint:{machine.id}.{sensor.attribute}:{direction}", "setpoint", machine.entity_id,
                    machine.id,
                    f"{machine.name} {_words(sensor.attribute)} reads {q(level, unit)} against its setpoint "
                    f"{q(target, unit)}: {q(abs(offset), unit)} {direction}",
                    attribute=sensor.attribute, value=level, unit_code=unit, direction=direction,
                    numbers={**numbers, "setpoint": target, "offset": offset}))
            if width and normal is not None:
                drift = self._drift(machine, sensor, stats, target, width, history, window)
                if drift is not None:
                    out.append(drift)
        if width and stats.count >= th.trend_min_count:
            change = stats.trend_per_min * minutes
            if abs(change) > th.trend_fraction * width:
                direction = "high" if change > 0 else "low"
                out.append(Finding(
                    f"trend:{machine.id}.{sensor.attribute}:{'rising' if change > 0 else 'falling'}", "trend",
                    machine.entity_id, machine.id,
                    f"{machine.name} {_words(sensor.attribute)} is {'rising' if change > 0 else 'falling'} "
                    f"{q(abs(stats.trend_per_min), unit)}/min (from {q(stats.first, unit)} to "
                    f"{q(stats.last, unit)} in the window)",
                    attribute=sensor.attribute, value=stats.trend_per_min, unit_code=unit, direction=direction,
                    numbers={**numbers, "change": change}))
        return out

    def _drift(self, machine: Machine, sensor: Sensor, stats: AttributeStats, target: float, width: float,
               history: LineHistory | None, window: LineWindow) -> Finding | None:
        """A controlled reading creeping away from its setpoint: a one-sided CUSUM of the deviation over the
        previous windows and this one, or a deviation that grows fast enough to reach the normal limit within
        the horizon. Reported with the rate and the projected minutes to the limit."""
        th = self.thresholds
        assert sensor.normal is not None
        deviation = stats.recent - target
        if abs(deviation) < th.drift_fraction * width * 0.6:
            return None
        sign = 1.0 if deviation > 0 else -1.0
        means = [m for _, m in (history.previous(machine.entity_id, sensor.attribute, window.start_ms)
                                if history else [])]
        cusum = 0.0
        for mean in [*means, stats.mean, stats.recent]:
            cusum = max(0.0, cusum + sign * (mean - target) / width - th.cusum_k)
        rate = stats.trend_per_min
        if means and abs(rate) < 1e-9:
            rate = (stats.recent - means[-1]) / max(1.0, (window.end_ms - window.start_ms) / 60_000)
        limit = sensor.normal.max if sign > 0 else sensor.normal.min
        growing = rate * sign >= th.drift_rate_fraction * width
        remaining = (limit - stats.recent) * sign
        minutes = 0.0 if remaining <= 0 else (remaining / abs(rate) if growing else math.inf)
        creeping = (abs(deviation) >= th.drift_fraction * width and growing and minutes <= th.drift_horizon_min)
        if not creeping and cusum < th.cusum_h:
            return None
        direction = "high" if sign > 0 else "low"
        unit = sensor.unit or stats.unit_code
        q = self._q
        when = ("already past it" if minutes == 0 else f"reaching it in about {minutes:.0f} min"
                if math.isfinite(minutes) else "not growing now")
        return Finding(
            f"drift:{machine.id}.{sensor.attribute}:{direction}", "drift", machine.entity_id, machine.id,
            f"{machine.name} {_words(sensor.attribute)} is drifting {'up' if sign > 0 else 'down'}: "
            f"{q(abs(deviation), unit)} {'over' if sign > 0 else 'under'} its setpoint {q(target, unit)}, "
            f"changing {q(abs(rate), unit)}/min; normal {'maximum' if sign > 0 else 'minimum'} {q(limit, unit)}, "
            f"{when}",
            attribute=sensor.attribute, value=stats.recent, unit_code=unit, direction=direction,
            numbers={"recent": stats.recent, "setpoint": target, "offset": deviation, "rate_per_min": rate,
                     "cusum": cusum, "limit": limit,
                     "minutes_to_limit": minutes if math.isfinite(minutes) else -1.0})

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

    # --- causes --------------------------------------------------------------------------------------------

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
                setpoints: dict[tuple[str, str], float] | None = None, memory: Memory | None = None) -> Analysis:
        line = self._line(window.line_id)
        # Actions start from the setpoint the machine reports now; an explicit override wins; else the recipe.
        setpoints = {**self.reported_setpoints(window, line), **(setpoints or {})}
        findings = self.findings(window, history, setpoints)
        by_id = {f.id: f for f in findings}
        causes = self._causes(line, window, findings, setpoints, memory)
        claimed = {i for c in causes for i in c.finding_ids}
        if causes:
            return self._conclude(line, window, findings, causes, by_id, claimed, memory)
        unexplained = [f for f in findings if f.kind in ("defect_rate", "silence", "alarm")]
        if unexplained:
            return self._quality_only(line, window, findings, unexplained)
        return Analysis(
            line_id=window.line_id, window_start=window.start_ms, window_end=window.end_ms, findings=findings,
            category="none", severity="info", title=f"{line.name}: running normally",
            summary="No reading is outside its normal range or drifting, no machine is silent and defects stay at "
                    f"their background rate ({self._span(window)}). No action.",
            root_cause_text="Nothing is wrong.", cited=[f.id for f in findings],
            steps=["No action. Keep the line on its recipe setpoints."], units=dict(self.knowledge.units))

    def _span(self, window: LineWindow) -> str:
        return f"window {self.local_time(window.start_ms)} to {self.local_time(window.end_ms)}"

    def _causes(self, line: Line, window: LineWindow, findings: list[Finding],
                setpoints: dict[tuple[str, str], float], memory: Memory | None) -> list[RootCause]:
        kb = self.knowledge
        defects = {f.attribute: f for f in findings if f.kind == "defect_rate"}
        groups: dict[tuple[str, str], list[Finding]] = {}
        causes: list[RootCause] = []
        for finding in findings:
            machine = line.machines.get(finding.machine_id)
            if machine is None:
                continue
            if finding.kind == "state":
                texts = kb.stopped_texts(machine)
                values = self._values(machine, None, finding, setpoints) | {"state": finding.direction}
                causes.append(RootCause(
                    machine_id=machine.id, entity_id=machine.entity_id, category="equipment_fault", score=90.0,
                    finding_ids=[finding.id], why=finding.description, kind="stopped",
                    attribute=finding.attribute, direction=finding.direction,
                    title=render(texts.title, values), text=render(texts.root_cause, values),
                    steps=[render(s, values) for s in texts.steps], safety=texts.notes("safety", machine.type),
                    compliance=texts.notes("compliance", machine.type)))
                continue
            if finding.kind in DEVIATION_KINDS + ("trend",) and finding.attribute and not kb.is_flow(
                    machine, finding.attribute):
                groups.setdefault((machine.id, finding.attribute), []).append(finding)
        # A reading that only corroborates another deviating reading of its machine is that one's evidence.
        deviating = {key for key, group in groups.items() if any(f.kind in DEVIATION_KINDS for f in group)}
        absorbed: set[tuple[str, str]] = set()
        for machine_id, attribute in deviating:
            rule = kb.corroboration_for(line.machines[machine_id], attribute)
            for signal in rule.signals if rule else ():
                if (machine_id, signal.attribute) in groups and (machine_id, signal.attribute) != (machine_id,
                                                                                                    attribute):
                    absorbed.add((machine_id, signal.attribute))
        stopped = {c.machine_id: c for c in causes if c.kind == "stopped"}
        for key in sorted(deviating):
            if key[0] in stopped:  # a stopped machine's own readings fall because it stopped
                stopped[key[0]].finding_ids += [f.id for f in groups[key]]
                continue
            if key in absorbed and any(k not in absorbed for k in deviating if k[0] == key[0] and k != key):
                continue
            machine = line.machines[key[0]]
            cause = self._deviation_cause(line, machine, key[1], groups[key], groups, window, defects, setpoints,
                                          memory)
            if cause is not None:
                causes.append(cause)
        # Rank: strongest first; between equals the machine furthest upstream (it explains the others); a
        # playbook operators voted down on this line ranks lower.
        order = {m.id: len(self.graph.downstream(m.entity_id)) for m in line.machines.values()}
        for cause in causes:
            if memory and cause.playbook and memory.downvoted.get(cause.playbook):
                cause.score -= 5.0 * min(3, memory.downvoted[cause.playbook])
        causes.sort(key=lambda c: (-c.score, -order.get(c.machine_id, 0), c.machine_id, c.attribute or ""))
        self._claim(line, findings, causes)
        return causes

    def _deviation_cause(self, line: Line, machine: Machine, attribute: str, group: list[Finding],
                         groups: dict[tuple[str, str], list[Finding]], window: LineWindow,
                         defects: dict[str | None, Finding], setpoints: dict[tuple[str, str], float],
                         memory: Memory | None) -> RootCause | None:
        kb = self.knowledge
        lead = next((f for kind in DEVIATION_KINDS for f in group if f.kind == kind), group[0])
        direction = lead.direction or ""
        sensor = machine.sensor(attribute)
        stats = window.attribute(machine.entity_id, attribute)
        if sensor is None or stats is None:
            return None
        reference = self._reference(machine, sensor, setpoints)
        verdict, why, signals = self._verdict(line, machine, sensor, stats.recent - reference, direction, window,
                                              defects)
        ids = [f.id for f in sorted(group, key=lambda f: DEVIATION_KINDS.index(f.kind)
                                    if f.kind in DEVIATION_KINDS else 9)]
        for signal in signals:  # the corroborating readings' own findings are this cause's evidence
            ids += [f.id for f in groups.get((machine.id, signal), ()) if f.id not in ids]
        excess = max((f.numbers.get("excess_fraction", 0.0) for f in group), default=0.0)
        drift = next((f for f in group if f.kind == "drift"), None)
        minutes = None
        if drift is not None and drift.numbers.get("minutes_to_limit", -1.0) >= 0:
            minutes = drift.numbers["minutes_to_limit"]
        values = self._values(machine, sensor, lead, setpoints) | {
            "corroborating": ", ".join(_words(s.attribute) for s in (kb.corroboration_for(
                machine, attribute).signals if kb.corroboration_for(machine, attribute) else ())) or "other readings",
            "drift": drift.description.split(": ", 1)[-1] if drift else ""}
        if verdict == "sensor":
            texts = kb.sensor_fault
            return RootCause(
                machine_id=machine.id, entity_id=machine.entity_id, category="sensor_fault",
                score=55.0 + 10.0 * min(1.0, excess), finding_ids=ids, why=why, kind="sensor", attribute=attribute,
                direction=direction, playbook="sensor-fault", title=render(texts.title, values),
                text=render(texts.root_cause, values), steps=[render(s, values) for s in texts.steps],
                safety=texts.notes("safety", machine.type), compliance=texts.notes("compliance", machine.type),
                verdict=why, minutes_to_limit=minutes)
        playbook = kb.playbook(machine, attribute, direction)
        has_range = any(f.kind == "range" for f in group)
        score = (60.0 if playbook else 40.0) + 10.0 * min(1.0, excess)
        if not has_range:
            score -= 10.0  # a setpoint deviation or a drift, still inside the normal range
        if playbook is not None and playbook.defect and playbook.defect in defects:
            defect = defects[playbook.defect]
            if self._downstream_of(line, machine, defect):
                score = 80.0 + 10.0 * min(1.0, defect.numbers.get("rate", 0.0))
        if playbook is None:
            texts = kb.default
            return RootCause(
                machine_id=machine.id, entity_id=machine.entity_id, category="equipment_fault", score=score,
                finding_ids=ids, why=lead.description, attribute=attribute, direction=direction,
                title=render(texts.title, values), text=render(texts.root_cause, values),
                steps=[render(s, values) for s in texts.steps], verdict=why, minutes_to_limit=minutes)
        actions, waiting = self._actions(line, machine, sensor, playbook, lead, reference, setpoints, memory,
                                         values)
        if actions:
            values |= {"parameter": actions[0].parameter, "max_step": self._q(actions[0].max_step,
                                                                                 actions[0].unit_code),
                       "current": self._q(actions[0].current, actions[0].unit_code),
                       "value": self._q(actions[0].value, actions[0].unit_code)}
        text = render(playbook.root_cause, values)
        if drift is not None and not has_range:
            text += f" It is still inside its normal range but {values['drift']}."
        steps = [render(s, values) for s in playbook.steps]
        if waiting:
            steps = waiting + [s for s in steps[1:]] if playbook.action else steps
        return RootCause(
            machine_id=machine.id, entity_id=machine.entity_id, category=playbook.category, score=score,
            finding_ids=ids, why=lead.description, attribute=attribute, direction=direction, playbook=playbook.id,
            title=render(playbook.title, values), text=text, steps=steps, actions=actions,
            safety=[render(s, values) for s in playbook.safety],
            compliance=[render(s, values) for s in playbook.compliance], verdict=why, minutes_to_limit=minutes,
            waiting=waiting)

    def _reference(self, machine: Machine, sensor: Sensor, setpoints: dict[tuple[str, str], float]) -> float:
        """What the reading should be: its setpoint, else its declared usual level, else its normal middle."""
        if sensor.setpoint:
            return setpoints.get((machine.id, sensor.setpoint), machine.setpoints[sensor.setpoint].default)
        rule = self.knowledge.corroboration_for(machine, sensor.attribute)
        if rule is not None and rule.baseline is not None:
            return rule.baseline
        if sensor.normal is not None:
            return (sensor.normal.min + sensor.normal.max) / 2
        return 0.0

    def _verdict(self, line: Line, machine: Machine, sensor: Sensor, deviation: float, direction: str,
                 window: LineWindow, defects: dict[str | None, Finding]) -> tuple[str, str, list[str]]:
        """real | sensor | unknown, why in words, and the corroborating attributes that were checked."""
        rule = self.knowledge.corroboration_for(machine, sensor.attribute)
        if rule is None:
            return "unknown", "no corroboration model for this reading", []
        defect = rule.product.get(direction)
        if defect and defect in defects and self._downstream_of(line, machine, defects[defect]):
            return "real", f"{defect} cookies rose downstream", [s.attribute for s in rule.signals]
        checked: list[str] = []
        for signal in rule.signals:
            other = machine.sensor(signal.attribute)
            stats = window.attribute(machine.entity_id, signal.attribute)
            if other is None or stats is None or stats.count == 0:
                continue
            width = (other.normal.max - other.normal.min) if other.normal else 0.0
            expected = signal.gain * deviation
            if abs(expected) < max(0.5, self.thresholds.corroboration_floor * width):
                continue  # too small a move to tell from noise
            baseline = signal.baseline if signal.baseline is not None else (
                (other.normal.min + other.normal.max) / 2 if other.normal else stats.mean)
            observed = stats.recent - baseline
            checked.append(signal.attribute)
            if observed / expected >= self.thresholds.corroboration_ratio:
                return "real", f"{_words(signal.attribute)} moved with it", checked
        if checked:
            return "sensor", (f"{', '.join(_words(a) for a in checked)} did not move with it and the product is "
                              "clean"), checked
        return "unknown", "nothing can tell yet; taken as real", []

    def _downstream_of(self, line: Line, machine: Machine, finding: Finding) -> bool:
        station = line.machines.get(finding.machine_id)
        entity = station.entity_id if station else finding.entity_id
        return entity in self.graph.downstream(machine.entity_id) or entity == machine.entity_id

    def _values(self, machine: Machine, sensor: Sensor | None, lead: Finding,
                setpoints: dict[tuple[str, str], float]) -> dict[str, Any]:
        unit = lead.unit_code or (sensor.unit if sensor else None)
        values: dict[str, Any] = {
            "machine": machine.name, "machine_lc": machine.name.lower(), "attribute": _words(lead.attribute),
            "direction": lead.direction or "", "level": self._q(lead.value or 0.0, unit) if lead.value is not None
            else "", "sensor": sensor.id.rsplit(":", 1)[-1] if sensor else "", "defect": ""}
        if sensor is not None and sensor.normal is not None:
            values["limit"] = self._q(sensor.normal.max if lead.direction == "high" else sensor.normal.min, unit)
        if sensor is not None and sensor.setpoint:
            target = setpoints.get((machine.id, sensor.setpoint), machine.setpoints[sensor.setpoint].default)
            values["setpoint"] = self._q(target, unit)
            values["offset"] = self._q(abs((lead.value or target) - target), unit)
        return values

    def _actions(self, line: Line, machine: Machine, sensor: Sensor, playbook: Playbook, lead: Finding,
                 reference: float, setpoints: dict[tuple[str, str], float], memory: Memory | None,
                 values: dict[str, Any]) -> tuple[list[ProposedAction], list[str]]:
        rule = playbook.action
        if rule is None:
            return [], []
        target_machine = machine if rule.machine == "self" else next(
            (m for m in line.machines.values() if m.type == rule.machine), None)
        if target_machine is None:
            return [], []
        parameter = sensor.setpoint if rule.parameter == "{setpoint}" else rule.parameter
        setpoint = target_machine.setpoints.get(parameter or "")
        if setpoint is None:
            return [], []
        current = setpoints.get((target_machine.id, setpoint.parameter), setpoint.default)
        sign = -1.0 if rule.direction == "decrease" else 1.0
        level = lead.value if lead.value is not None else reference
        if rule.amount == "offset":
            amount = max(0.0, abs(level - reference))
            reason = (f"{_words(sensor.attribute)} reads {self._q(level, sensor.unit)} against "
                      f"{self._q(reference, sensor.unit)}; moving {setpoint.parameter} by the offset brings the "
                      "real value back to the recipe")
        else:
            amount = setpoint.max_step
            reason = (f"{_words(sensor.attribute)} reads {self._q(level, sensor.unit)}; one step of "
                      f"{setpoint.parameter} counters it")
        key = (target_machine.id, setpoint.parameter)
        if memory is not None and key in memory.in_effect:
            value, at, status = memory.in_effect[key]
            due = at + memory.effect_ms
            return [], [f"{setpoint.parameter} was already changed to {self._q(value, setpoint.unit)} "
                        f"({status} at {self.local_time(at)}): waiting for its effect until about "
                        f"{self.local_time(due)}; do not change it again before then."]
        action = self._bounded(target_machine, setpoint, current, current + sign * amount, reason)
        if action is None:
            return [], []
        if memory is not None:
            signature = memory.rejected.get((target_machine.id, setpoint.parameter, action.direction))
            if signature is not None and signature == self.signature(lead):
                return [], [f"An operator rejected the {action.direction} of {setpoint.parameter} on the same "
                            "evidence; it is not proposed again until the evidence changes."]
        return [action], []

    @staticmethod
    def signature(finding: Finding) -> str:
        """The evidence a proposal stood on, coarsely: the finding and its level to two significant digits (230 °C
        and 231 °C are the same evidence, 250 °C is new); a rejected proposal comes back only when this changes."""
        value = float(finding.value or 0.0)
        digits = 1 - int(math.floor(math.log10(abs(value)))) if value else 0
        return f"{finding.id}@{round(value, digits):g}"

    def _claim(self, line: Line, findings: list[Finding], causes: list[RootCause]) -> None:
        """Each remaining finding goes to the one cause the asset graph and physics connect it to, or none."""
        kb = self.knowledge
        taken = {i for c in causes for i in c.finding_ids}
        for finding in findings:
            if finding.id in taken:
                continue
            owner: RootCause | None = None
            if finding.kind == "defect_rate":
                for cause in causes:
                    machine = line.machines[cause.machine_id]
                    playbook = kb.playbook(machine, cause.attribute or "", cause.direction or "") if (
                        cause.kind == "process") else None
                    if playbook and playbook.defect == finding.attribute and self._downstream_of(line, machine,
                                                                                                   finding):
                        owner = cause
                        break
            elif finding.kind == "alarm":
                same = [c for c in causes if c.entity_id == finding.entity_id]
                owner = next((c for c in same if c.attribute and c.attribute in finding.id), None) or (
                    same[0] if len(same) == 1 or any(c.kind == "stopped" for c in same) else None)
            elif finding.kind == "silence" or (finding.kind in ("range", "trend") and kb.is_flow(
                    line.machines.get(finding.machine_id) or line.machines[next(iter(line.machines))],
                    finding.attribute)):
                for cause in causes:
                    if cause.kind == "stopped" and self._downstream_of(line, line.machines[cause.machine_id],
                                                                       finding):
                        owner = cause
                        break
            elif finding.kind == "alarm_burst" and causes:
                owner = causes[0]
            if owner is not None:
                owner.finding_ids.append(finding.id)
                taken.add(finding.id)

    def _conclude(self, line: Line, window: LineWindow, findings: list[Finding], causes: list[RootCause],
                  by_id: dict[str, Finding], claimed: set[str], memory: Memory | None) -> Analysis:
        top = causes[0]
        cited = [i for c in causes for i in c.finding_ids if i in by_id]
        cited = list(dict.fromkeys(cited))
        actions = [a for c in causes for a in c.actions]
        steps: list[str] = []
        for cause in causes:
            steps += [s for s in cause.steps if s not in steps]
        safety = list(dict.fromkeys(n for c in causes for n in c.safety))
        compliance = list(dict.fromkeys(n for c in causes for n in c.compliance))
        title = top.title if len(causes) == 1 else f"{top.title}; also {causes[1].title}" + (
            f" (+{len(causes) - 2} more)" if len(causes) > 2 else "")
        root = top.text if len(causes) == 1 else top.text + " " + " ".join(
            f"Independently: {c.text}" for c in causes[1:3])
        parts = [f"{c.title}: {by_id[c.finding_ids[0]].description}" for c in causes[:3] if c.finding_ids]
        others = len([f for f in findings if f.id not in claimed])
        summary = "; ".join(parts) + f" ({self._span(window)})."
        if others:
            summary += f" {others} further finding{'s' if others > 1 else ''} in the window."
        defect_rates = {f.attribute: f for f in findings if f.kind == "defect_rate"}
        return Analysis(
            line_id=window.line_id, window_start=window.start_ms, window_end=window.end_ms, findings=findings,
            causes=causes, category=top.category, severity=self._severity(findings, top, defect_rates),
            title=title, summary=summary, root_cause_entity=top.entity_id, root_cause_machine=top.machine_id,
            root_cause_text=root, cited=cited, steps=steps, actions=actions, safety_notes=safety,
            compliance_notes=compliance, waiting=[w for c in causes for w in c.waiting],
            units=dict(self.knowledge.units))

    def _quality_only(self, line: Line, window: LineWindow, findings: list[Finding],
                      unexplained: list[Finding]) -> Analysis:
        lead = unexplained[0]
        category = "quality" if lead.kind == "defect_rate" else "equipment_fault"
        severity = "major" if lead.kind in ("defect_rate", "alarm") else "minor"
        machine = line.machines.get(lead.machine_id)
        cause = RootCause(
            machine_id=lead.machine_id, entity_id=machine.entity_id if machine else lead.entity_id,
            category=category, score=30.0, finding_ids=[f.id for f in unexplained], why=lead.description,
            kind="quality", title=f"{line.name}: {lead.description}",
            text="No upstream reading explains it yet; inspect the station and the machines before it.",
            steps=[f"Inspect the {machine.name.lower() if machine else lead.machine_id} and the machines upstream "
                   "of it.", "Take samples of the product and check them by hand."])
        return Analysis(
            line_id=window.line_id, window_start=window.start_ms, window_end=window.end_ms, findings=findings,
            causes=[cause], category=category, severity=severity, title=cause.title,
            summary=f"{'; '.join(f.description for f in unexplained[:4])} ({self._span(window)}).",
            root_cause_entity=machine.entity_id if machine else None,
            root_cause_machine=machine.id if machine else None, root_cause_text=cause.text,
            cited=list(cause.finding_ids), steps=list(cause.steps), units=dict(self.knowledge.units))

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
                              reason, setpoint.max_step)

    # --- helpers -------------------------------------------------------------------------------------------

    def _line(self, line_id: str) -> Line:
        line = self.plant.lines.get(line_id)
        if line is None:
            raise KeyError(f"unknown line {line_id!r} (known: {', '.join(sorted(self.plant.lines))})")
        return line

    @staticmethod
    def _severity(findings: list[Finding], top: RootCause, defect_rates: dict[str | None, Finding]) -> str:
        if top.kind == "sensor" and not defect_rates and not any(f.kind == "state" for f in findings):
            return "major" if any(f.kind == "alarm" for f in findings) else "minor"
        if any(f.kind in ("state", "alarm") for f in findings) or any(
                f.numbers.get("rate", 0.0) >= 0.5 for f in defect_rates.values()):
            return "critical"
        if defect_rates or top.score >= 60:
            return "major"
        return "minor"


def worst_severity(a: str, b: str) -> str:
    return a if SEVERITY_ORDER.index(a) >= SEVERITY_ORDER.index(b) else b
