"""The per-line window: what happened on one line between `start_ms` and `end_ms`.

A `LineWindow` folds unified records (observations, alarm state changes, inspections) into small running
aggregates, so the window costs the same memory whether it saw a hundred events or a million:

- per (entity, attribute): count, min, max, sum, first, last, a least-squares trend (units per minute) and a
  `recent` level (an exponential average that follows the last few readings, so a ramp late in the window
  shows at its current height rather than its average);
- per state attribute: the last state and how many readings each state got;
- per alarm id: raises and clears seen, severity, whether it is active at the end;
- per inspection station: items, defective items, defects by class, and the time of the last item;
- per entity: readings and the time of the last one (silence is judged from these).

`to_dict` / `from_dict` give a JSON-safe form, which is what the changelog carries, so a restarted worker
recovers the open windows exactly. Folding is order-insensitive except for `last`, `recent` and the trend's
numerical rounding, and records are deduplicated by id so a replay after a crash does not count twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SERIES_WINDOWS = 6  # closed windows per reading kept in the line's history (30 minutes of 5-minute windows)
RECENT_ALPHA = 0.2  # weight of the newest reading in `recent`; about the last ten readings count


@dataclass
class AttributeStats:
    entity_id: str
    attribute: str
    unit_code: str | None = None
    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    total: float = 0.0
    first: float = 0.0
    first_at: int = 0
    last: float = 0.0
    last_at: int = 0
    recent: float = 0.0
    # Sums for the least-squares slope; t in seconds from the first reading (keeps the numbers small).
    sum_t: float = 0.0
    sum_tt: float = 0.0
    sum_v: float = 0.0
    sum_tv: float = 0.0

    def add(self, value: float, at_ms: int) -> None:
        if self.count == 0:
            self.first, self.first_at, self.recent = value, at_ms, value
        self.count += 1
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.total += value
        if at_ms >= self.last_at:
            self.last, self.last_at = value, at_ms
        self.recent += RECENT_ALPHA * (value - self.recent)
        t = (at_ms - self.first_at) / 1000.0
        self.sum_t += t
        self.sum_tt += t * t
        self.sum_v += value
        self.sum_tv += t * value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def trend_per_min(self) -> float:
        """Least-squares slope in units per minute; 0 with fewer than 3 readings or no spread in time."""
        n = self.count
        if n < 3:
            return 0.0
        denominator = n * self.sum_tt - self.sum_t * self.sum_t
        if denominator <= 1e-9:
            return 0.0
        return (n * self.sum_tv - self.sum_t * self.sum_v) / denominator * 60.0

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if self.count == 0:
            out["min"], out["max"] = None, None
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AttributeStats:
        stats = cls(**raw)
        if stats.min is None:
            stats.min, stats.max = math.inf, -math.inf
        return stats


@dataclass
class StateStats:
    entity_id: str
    attribute: str
    last: str = ""
    last_at: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, value: str, at_ms: int) -> None:
        self.counts[value] = self.counts.get(value, 0) + 1
        if at_ms >= self.last_at:
            self.last, self.last_at = value, at_ms


@dataclass
class AlarmStats:
    alarm_id: str
    entity_id: str
    alarm_type: str
    severity: str
    raises: int = 0
    clears: int = 0
    active: bool = False
    last_at: int = 0
    message: str | None = None

    def add(self, record: dict[str, Any]) -> None:
        at = int(record["updated_at"])
        if record["state"] == "active":
            self.raises += 1
        else:
            self.clears += 1
        if at >= self.last_at:
            self.last_at = at
            self.active = record["state"] == "active"
            self.severity = record["severity"]
            self.message = record.get("message") or self.message


@dataclass
class StationStats:
    station: str
    entity_id: str
    items: int = 0
    defective: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    first_at: int = 0
    last_at: int = 0
    not_judged: int = 0  # abstentions: the station reported the item but its detector declined to judge it

    def add(self, record: dict[str, Any]) -> None:
        at = int(record["captured_at"])
        if (self.items == 0 and self.not_judged == 0) or at < self.first_at:
            self.first_at = at
        self.last_at = max(self.last_at, at)
        if record["verdict"] == "abstained":  # neither a defect nor a good item: not in the rates' denominator
            self.not_judged += 1
            return
        self.items += 1
        if record["verdict"] == "defective":
            self.defective += 1
        for defect_class in {d["defect_class"] for d in record.get("defects") or ()}:
            self.by_class[defect_class] = self.by_class.get(defect_class, 0) + 1

    def rate(self, defect_class: str) -> float:
        return self.by_class.get(defect_class, 0) / self.items if self.items else 0.0


@dataclass
class LineWindow:
    line_id: str
    start_ms: int
    end_ms: int
    attributes: dict[str, AttributeStats] = field(default_factory=dict)
    states: dict[str, StateStats] = field(default_factory=dict)
    alarms: dict[str, AlarmStats] = field(default_factory=dict)
    stations: dict[str, StationStats] = field(default_factory=dict)
    # entity id -> [readings, last observedAt, distinct report times] (a batch of readings at one time is one report)
    entities: dict[str, list[int]] = field(default_factory=dict)
    events: int = 0
    # Ids already folded in (bounded by the window's size); a replayed record is ignored.
    seen_ids: set[str] = field(default_factory=set)

    @staticmethod
    def key(entity_id: str, attribute: str) -> str:
        return f"{entity_id}|{attribute}"

    def contains(self, at_ms: int) -> bool:
        return self.start_ms <= at_ms < self.end_ms

    def _first_time(self, record_id: str | None) -> bool:
        if record_id is None:
            return True
        if record_id in self.seen_ids:
            return False
        self.seen_ids.add(record_id)
        return True

    def add_observation(self, record: dict[str, Any]) -> bool:
        if not self._first_time(record.get("id")):
            return False
        entity, attribute, at = record["entity_id"], record["attribute"], int(record["observed_at"])
        value = record.get("value")
        key = self.key(entity, attribute)
        if isinstance(value, str):
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = StateStats(entity, attribute)
            state.add(value, at)
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            stats = self.attributes.get(key)
            if stats is None:
                stats = self.attributes[key] = AttributeStats(entity, attribute, record.get("unit_code"))
            stats.add(float(value), at)
        seen = self.entities.get(entity)
        if seen is None:
            self.entities[entity] = [1, at, 1]
        else:
            seen[0] += 1
            if at != seen[1]:
                seen[2] += 1
            seen[1] = max(seen[1], at)
        self.events += 1
        return True

    def add_alarm(self, record: dict[str, Any]) -> bool:
        if not self._first_time(f"alarm:{record.get('raw_id')}:{record['state']}"):
            return False
        alarm = self.alarms.get(record["alarm_id"])
        if alarm is None:
            alarm = self.alarms[record["alarm_id"]] = AlarmStats(
                record["alarm_id"], record["entity_id"], record["alarm_type"], record["severity"])
        alarm.add(record)
        self.events += 1
        return True

    def add_inspection(self, record: dict[str, Any]) -> bool:
        if not self._first_time(record.get("id")):
            return False
        station = self.stations.get(record["station"])
        if station is None:
            station = self.stations[record["station"]] = StationStats(record["station"],
                                                                     record["station_entity_id"])
        station.add(record)
        self.events += 1
        return True

    def add(self, kind: str, record: dict[str, Any]) -> bool:
        """Fold one unified record; `kind` is observations, alarms or inspections."""
        if kind == "observations":
            return self.add_observation(record)
        if kind == "alarms":
            return self.add_alarm(record)
        if kind == "inspections":
            return self.add_inspection(record)
        raise ValueError(f"unknown record kind {kind!r}")

    def attribute(self, entity_id: str, attribute: str) -> AttributeStats | None:
        return self.attributes.get(self.key(entity_id, attribute))

    def state(self, entity_id: str, attribute: str) -> StateStats | None:
        return self.states.get(self.key(entity_id, attribute))

    # --- serialization (the changelog form) ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "line_id": self.line_id, "start_ms": self.start_ms, "end_ms": self.end_ms, "events": self.events,
            "attributes": {k: v.to_dict() for k, v in self.attributes.items()},
            "states": {k: dict(v.__dict__) for k, v in self.states.items()},
            "alarms": {k: dict(v.__dict__) for k, v in self.alarms.items()},
            "stations": {k: dict(v.__dict__) for k, v in self.stations.items()},
            "entities": {k: list(v) for k, v in self.entities.items()},
            "seen_ids": sorted(self.seen_ids),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LineWindow:
        return cls(
            line_id=raw["line_id"], start_ms=int(raw["start_ms"]), end_ms=int(raw["end_ms"]),
            events=int(raw.get("events", 0)),
            attributes={k: AttributeStats.from_dict(v) for k, v in raw.get("attributes", {}).items()},
            states={k: StateStats(**v) for k, v in raw.get("states", {}).items()},
            alarms={k: AlarmStats(**v) for k, v in raw.get("alarms", {}).items()},
            stations={k: StationStats(**v) for k, v in raw.get("stations", {}).items()},
            entities={k: (list(v) + [v[0]])[:3] for k, v in raw.get("entities", {}).items()},
            seen_ids=set(raw.get("seen_ids", ())),
        )


def window_bounds(at_ms: int, size_ms: int) -> tuple[int, int]:
    """The tumbling window [start, end) that holds `at_ms`; windows align to the epoch."""
    start = at_ms - at_ms % size_ms
    return start, start + size_ms


@dataclass
class LineHistory:
    """What the advisor remembers about a line across windows: when each entity and station last reported,
    and how often it usually reports (so a machine that reports every five minutes is not called silent
    after two)."""

    last_seen: dict[str, int] = field(default_factory=dict)
    interval_ms: dict[str, float] = field(default_factory=dict)
    # "<entity>|<attribute>" -> the last SERIES_WINDOWS closed windows' [end ms, mean, last] of a numeric reading:
    # what drift detection (CUSUM over windows, rate of change) and the age of a deviation are judged from.
    series: dict[str, list[list[float]]] = field(default_factory=dict)

    def update(self, window: LineWindow) -> None:
        for key, stats in window.attributes.items():
            if stats.count:
                points = self.series.setdefault(key, [])
                points.append([float(window.end_ms), round(stats.mean, 4), round(stats.last, 4)])
                del points[:-SERIES_WINDOWS]
        for entity, (_, last_at, count) in window.entities.items():
            previous = self.last_seen.get(entity)
            if count >= 2:
                # An average gap within the window; close enough for a silence threshold.
                span = max(1, window.end_ms - window.start_ms)
                gap = span / count
                old = self.interval_ms.get(entity)
                self.interval_ms[entity] = gap if old is None else 0.5 * old + 0.5 * gap
            elif previous is not None:
                gap = float(last_at - previous)
                if gap > 0:
                    self.interval_ms[entity] = max(self.interval_ms.get(entity, 0.0), gap)
            self.last_seen[entity] = max(previous or 0, last_at)
        for station in window.stations.values():
            key = f"station:{station.station}"
            self.last_seen[key] = max(self.last_seen.get(key, 0), station.last_at)
            if station.items >= 2:
                gap = max(1, window.end_ms - window.start_ms) / station.items
                old = self.interval_ms.get(key)
                self.interval_ms[key] = gap if old is None else 0.5 * old + 0.5 * gap

    def to_dict(self) -> dict[str, Any]:
        return {"last_seen": dict(self.last_seen), "interval_ms": dict(self.interval_ms),
                "series": {k: [list(p) for p in v] for k, v in self.series.items()}}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> LineHistory:
        raw = raw or {}
        return cls(dict(raw.get("last_seen", {})), dict(raw.get("interval_ms", {})),
                   {k: [list(p) for p in v] for k, v in raw.get("series", {}).items()})

    def previous(self, entity_id: str, attribute: str, before_ms: int) -> list[tuple[float, float]]:
        """(window end, mean) of the closed windows before `before_ms`, oldest first."""
        return [(p[0], p[1]) for p in self.series.get(LineWindow.key(entity_id, attribute), ())
                if p[0] <= before_ms]
