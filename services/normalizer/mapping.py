"""Raw records -> the unified line model (NGSI-LD style), using the plant model.

    raw.telemetry.v1   -> line.observations.v1   entity, attribute, value in the canonical unit, quality flags
    raw.alarms.v1      -> line.alarms.v1         alarm state changes with stable alarm ids
    raw.inspections.v1 -> line.inspections.v1    inspections joined with the asset graph

Every raw record yields exactly one output keyed by line id, with an id derived from the raw id, so a replay
produces the same records. A record that cannot be mapped raises a `NormalizeError` whose message is the reason;
the consumer loop sends it to the dead-letter topic with that reason in its headers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lineguard import topics
from lineguard.kafka import Output, Record
from lineguard.logs import event, get_logger
from lineguard.plant import Machine, PlantModel, Sensor
from services.normalizer.alarms import AlarmActionError, AlarmTracker
from services.normalizer.units import Conversion, ImpossibleValueError, UnitError, conversion

log = get_logger(__name__)

RAW_TELEMETRY = topics.RAW_TELEMETRY
RAW_ALARMS = topics.RAW_ALARMS
RAW_INSPECTIONS = topics.RAW_INSPECTIONS
OBSERVATIONS = topics.LINE_OBSERVATIONS
ALARMS = topics.LINE_ALARMS
INSPECTIONS = topics.LINE_INSPECTIONS

# input topic -> (kind, output topic); the kind names the lake table and the metric label.
ROUTES: dict[str, tuple[str, str]] = {
    RAW_TELEMETRY: ("observations", OBSERVATIONS),
    RAW_ALARMS: ("alarms", ALARMS),
    RAW_INSPECTIONS: ("inspections", INSPECTIONS),
}


class NormalizeError(ValueError):
    """A raw record cannot be mapped; the message is the reason (it lands in the DLQ headers)."""


class UnknownDeviceError(NormalizeError):
    pass


class UnknownMetricError(NormalizeError):
    pass


class UnknownLineError(NormalizeError):
    pass


class InvalidValueError(NormalizeError):
    pass


class InvalidUnitError(NormalizeError):
    pass


class InvalidTimestampError(NormalizeError):
    pass


def to_epoch_ms(value: Any, name: str) -> int:
    """An epoch timestamp in milliseconds UTC. Sources that sent seconds, microseconds or nanoseconds by mistake
    are recognised by magnitude (ms since 1970 stay between 1e11 and 1e14 until the year 5138)."""
    if type(value) is int and 100_000_000_000 <= value < 100_000_000_000_000:
        return value  # the common case: already milliseconds
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidTimestampError(f"{name}={value!r} is not an epoch timestamp")
    if value <= 0:
        raise InvalidTimestampError(f"{name}={value!r} is not a positive epoch timestamp")
    if value < 1e11:  # seconds
        return int(round(value * 1000))
    if value < 1e14:
        return int(value)
    if value < 1e17:  # microseconds
        return int(value // 1000)
    return int(value // 1_000_000)  # nanoseconds


@dataclass(slots=True)
class _SensorPlan:
    """Everything the hot path needs about one (device, metric), resolved once."""

    sensor: Sensor
    line_id: str
    entity_id: str
    sensor_id: str
    normal_min: float
    normal_max: float
    conversions: dict[str | None, Conversion]
    recent: deque  # (observed_at ms, value, unit code, observation id), newest last: the temporal API's memory
    attribute: str
    is_state: bool
    unit: str | None  # the canonical unit code (None: unitless or a state)
    latest: dict[str, tuple[Any, str | None, int]]  # the entity's latest values (Normalizer.latest[entity_id])


class Normalizer:
    """Maps raw records to unified records; keeps alarm state and the latest value of every attribute."""

    def __init__(self, plant: PlantModel, stale_after_ms: int = 300_000, max_clock_skew_ms: int = 3_600_000,
                 max_clock_rate: float = 1.0, on_unknown_device: Callable[[str], None] | None = None,
                 recent_per_attribute: int = 3600) -> None:
        self.plant = plant
        self.graph = plant.graph()
        self.stale_after_ms = stale_after_ms
        self.max_clock_skew_ms = max_clock_skew_ms
        self.max_clock_rate = max(1.0, max_clock_rate)
        # device -> (observed_at, received_at) of its first reading: the anchor a fast device clock runs from
        self._clock_anchor: dict[str, tuple[int, int]] = {}
        self.alarms = AlarmTracker()
        self.on_unknown_device = on_unknown_device
        self._plans: dict[tuple[str, str], _SensorPlan] = {}
        self._device_machine: dict[str, Machine] = {}
        for machine in plant.machines():
            self._device_machine.setdefault(f"{machine.line_id}-{machine.id}", machine)
            for sensor in machine.sensors:
                self._device_machine.setdefault(sensor.device, machine)
        self._device_metrics: dict[str, list[str]] = {}
        for sensor in plant.sensors():
            self._device_metrics.setdefault(sensor.device, []).append(sensor.metric)
        self._unknown_seen: set[str] = set()
        self._upstream: dict[str, list[str]] = {}
        # entity id -> attribute -> (value, unit code, observedAt ms): the latest value seen, for the asset graph API.
        self.latest: dict[str, dict[str, tuple[Any, str | None, int]]] = {}
        # (entity id, attribute) -> the last `recent_per_attribute` observations in arrival order, for the temporal
        # API (what the lake does not hold yet). Appended by the consumer thread, copied by the API's (deque.copy
        # holds the GIL throughout).
        self.recent: dict[tuple[str, str], deque] = {}
        self.recent_per_attribute = recent_per_attribute

    # --- dispatch -----------------------------------------------------------------------------------------

    def handle(self, record: Record) -> list[Output]:
        topic = record.topic
        if topic == RAW_TELEMETRY:
            out = self.observation(record.value)
            return [Output(OBSERVATIONS, out["line_id"], out)]
        if topic == RAW_ALARMS:
            out = self.alarm(record.value)
            return [Output(ALARMS, out["line_id"], out)]
        if topic == RAW_INSPECTIONS:
            out = self.inspection(record.value)
            return [Output(INSPECTIONS, out["line_id"], out)]
        raise NormalizeError(f"the normalizer does not read topic {topic!r}")

    # --- telemetry ----------------------------------------------------------------------------------------

    def _unknown(self, device: str, metric: str) -> NormalizeError:
        known = self._device_metrics.get(device)
        if known is None:
            self._report_new(device, f"device {device!r}")
            return UnknownDeviceError(f"unknown device {device!r}: not in the plant model {self.plant.source}")
        self._report_new(f"{device}/{metric}", f"metric {metric!r} of device {device!r}")
        return UnknownMetricError(f"device {device!r} has no metric {metric!r} in the plant model "
                                  f"(known: {', '.join(sorted(known))})")

    def _report_new(self, key: str, what: str) -> None:
        """Log a new unknown device (or metric) once, not once per message."""
        if key in self._unknown_seen:
            return
        if len(self._unknown_seen) < 100_000:  # bounded: device ids come from the outside world
            self._unknown_seen.add(key)
        event(log, "unknown_device_seen", level=logging.WARNING, what=what, plant=self.plant.source)
        if self.on_unknown_device is not None:
            self.on_unknown_device(key)

    def _plan(self, device: str, metric: str) -> _SensorPlan:
        plan = self._plans.get((device, metric))
        if plan is not None:
            return plan
        sensor = self.plant.sensor_for(device, metric)
        if sensor is None:
            raise self._unknown(device, metric)
        normal = sensor.normal
        recent = self.recent.get((sensor.machine_entity_id, sensor.attribute))
        if recent is None:
            recent = self.recent[(sensor.machine_entity_id, sensor.attribute)] = deque(
                maxlen=self.recent_per_attribute)
        latest = self.latest.get(sensor.machine_entity_id)
        if latest is None:
            latest = self.latest[sensor.machine_entity_id] = {}
        plan = _SensorPlan(sensor, sensor.line_id, sensor.machine_entity_id, sensor.id,
                           normal.min if normal else -math.inf, normal.max if normal else math.inf, {}, recent,
                           sensor.attribute, sensor.kind == "state", sensor.unit, latest)
        self._plans[(device, metric)] = plan
        return plan

    def _conversion(self, plan: _SensorPlan, unit: str | None) -> Conversion:
        found = plan.conversions.get(unit)
        if found is None:
            try:
                found = conversion(unit, plan.sensor.unit)  # type: ignore[arg-type]
            except UnitError as exc:
                raise InvalidUnitError(f"{plan.sensor_id}: {exc} (canonical unit {plan.sensor.unit})") from None
            if len(plan.conversions) < 64:
                plan.conversions[unit] = found
        return found

    def _allowed_skew_ms(self, device: str, observed_at: int, received_at: int) -> float:
        """How far in the future of its receipt a reading may be observed. With a clock rate above 1 (a simulated
        clock at --speed N) the device's first reading anchors its clock, and later readings may run ahead of
        that anchor by up to `max_clock_rate` times the time elapsed since, plus the skew."""
        if self.max_clock_rate <= 1.0:
            return self.max_clock_skew_ms
        anchor = self._clock_anchor.get(device)
        if anchor is None:
            # a first reading further ahead than the rate allows for a whole skew period is a wrong clock, not speed
            if observed_at - received_at > self.max_clock_rate * self.max_clock_skew_ms:
                return self.max_clock_skew_ms
            anchor = self._clock_anchor[device] = (observed_at, received_at)
        elapsed = max(0, received_at - anchor[1])
        return max(self.max_clock_skew_ms,
                   anchor[0] - anchor[1] + (self.max_clock_rate - 1.0) * elapsed + self.max_clock_skew_ms)

    def observation(self, raw: dict) -> dict:
        # The hot path (one call per reading): the common cases are inlined (a known plan, epoch ms already,
        # a float value, a cached unit conversion, clock rate 1); every other case takes the general helpers.
        device = raw["device"]
        plan = self._plans.get((device, raw["metric"]))
        if plan is None:
            plan = self._plan(device, raw["metric"])
        observed_at = raw["observed_at"]
        if type(observed_at) is not int or not 100_000_000_000 <= observed_at < 100_000_000_000_000:
            observed_at = to_epoch_ms(observed_at, "observed_at")
        received_at = raw["received_at"]
        if type(received_at) is not int or not 100_000_000_000 <= received_at < 100_000_000_000_000:
            received_at = to_epoch_ms(received_at, "received_at")
        ahead = observed_at - received_at
        if ahead > (self.max_clock_skew_ms if self.max_clock_rate <= 1.0 else
                    self._allowed_skew_ms(device, observed_at, received_at)):
            raise InvalidTimestampError(
                f"observed_at is {ahead / 1000:.0f} s after received_at "
                f"(more than the allowed clock skew of {self.max_clock_skew_ms / 1000:.0f} s)")
        value = raw["value"]
        quality: list[str] = []
        unit_code: str | None
        if type(value) is float and not plan.is_state and plan.unit is not None:  # the common case
            conv = plan.conversions.get(raw["unit"] or None)
            if conv is None:
                conv = self._conversion(plan, raw["unit"] or None)
            try:
                value, clamped = conv.apply(value)
            except ImpossibleValueError as exc:
                raise InvalidValueError(f"{plan.sensor_id}: impossible value: {exc}") from None
            if clamped:
                quality.append("clamped")
            unit_code = plan.unit
            if not plan.normal_min <= value <= plan.normal_max:
                quality.append("out_of_range")
        else:
            value, unit_code = self._other_value(plan, raw, value, quality)
        if -ahead > self.stale_after_ms and "stale" not in quality:
            quality.append("stale")
        raw_id = raw["id"]
        oid = f"obs:{raw_id}"
        attribute = plan.attribute
        out = {
            "id": oid, "line_id": plan.line_id, "entity_id": plan.entity_id, "entity_type": "Machine",
            "sensor_id": plan.sensor_id, "attribute": attribute, "value": value, "unit_code": unit_code,
            "observed_at": observed_at, "quality": quality, "raw_id": raw_id, "source": raw["source"],
        }
        if value is None:  # a stale marker: the last value stays the latest known one, flagged in the output only
            return out
        latest = plan.latest
        previous = latest.get(attribute)
        if previous is None or observed_at >= previous[2]:  # a late, older reading does not replace a newer one
            latest[attribute] = (value, unit_code, observed_at)
        plan.recent.append((observed_at, value, unit_code, oid))
        return out

    def _other_value(self, plan: _SensorPlan, raw: dict, value: Any, quality: list[str]) -> tuple[Any, str | None]:
        """(value, unit code) of a state, a unitless number, or a number given as int or string."""
        sensor = plan.sensor
        unit_code: str | None
        if value is None and raw.get("attributes", {}).get("quality") == "stale":
            # A source said the last value is no longer current (a Sparkplug NDEATH, the host losing its broker):
            # a fact to pass on, not bad input; a plant-wide death would otherwise fill the DLQ and trip its limit.
            quality.append("stale")
            return None, None if plan.is_state else plan.unit
        if plan.is_state:
            if isinstance(value, bool) or not isinstance(value, str):
                raise InvalidValueError(f"{plan.sensor_id}: state {value!r} is not a string")
            value = value.strip().lower()
            if sensor.states and value not in sensor.states:
                raise InvalidValueError(f"{plan.sensor_id}: unknown state {value!r} "
                                        f"(known: {', '.join(sensor.states)})")
            unit_code = None
        else:
            if value is None or isinstance(value, bool):
                raise InvalidValueError(f"{plan.sensor_id}: expected a number, got {value!r}")
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise InvalidValueError(f"{plan.sensor_id}: expected a number, got {value!r}") from None
            unit = raw["unit"] or None
            if sensor.unit is None:
                if not math.isfinite(value):
                    raise InvalidValueError(f"{plan.sensor_id}: {value} is not a finite number")
                unit_code = unit
            else:
                try:
                    value, clamped = self._conversion(plan, unit).apply(value)
                except ImpossibleValueError as exc:
                    raise InvalidValueError(f"{plan.sensor_id}: impossible value: {exc}") from None
                if clamped:
                    quality.append("clamped")
                unit_code = sensor.unit
            if not plan.normal_min <= value <= plan.normal_max:
                quality.append("out_of_range")
        return value, unit_code

    def _remember(self, entity: str, attribute: str, value: Any, unit_code: str | None, observed_at: int) -> None:
        attributes = self.latest.get(entity)
        if attributes is None:
            attributes = self.latest[entity] = {}
        previous = attributes.get(attribute)
        if previous is None or observed_at >= previous[2]:  # a late, older reading does not replace a newer one
            attributes[attribute] = (value, unit_code, observed_at)

    def latest_property(self, entity: str, attribute: str) -> dict[str, Any] | None:
        """The latest value of an attribute as an NGSI-LD Property (observedAt in epoch ms)."""
        found = self.latest.get(entity, {}).get(attribute)
        if found is None:
            return None
        value, unit_code, observed_at = found
        prop: dict[str, Any] = {"type": "Property", "value": value, "observedAt": observed_at}
        if unit_code:
            prop["unitCode"] = unit_code
        return prop

    # --- alarms -------------------------------------------------------------------------------------------

    def machine_for_device(self, device: str) -> Machine:
        machine = self._device_machine.get(device)
        if machine is None:
            self._report_new(device, f"device {device!r}")
            raise UnknownDeviceError(f"unknown device {device!r}: not in the plant model {self.plant.source}")
        return machine

    def alarm(self, raw: dict, partition: int | None = None, offset: int | None = None) -> dict:
        """The AlarmState a raw alarm causes. `partition` and `offset` are accepted for callers written against
        the first version and ignored: replays are recognised by the raw id."""
        machine = self.machine_for_device(raw["device"])
        if not raw["alarm_type"].strip():
            raise InvalidValueError("alarm_type is empty")
        observed_at = to_epoch_ms(raw["observed_at"], "observed_at")
        try:
            return self.alarms.apply(raw, machine.line_id, machine.entity_id, observed_at)
        except AlarmActionError as exc:
            raise InvalidValueError(str(exc)) from None

    # --- inspections --------------------------------------------------------------------------------------

    def inspection(self, raw: dict) -> dict:
        line = self.plant.lines.get(raw["line_id"])
        if line is None:
            raise UnknownLineError(f"unknown line {raw['line_id']!r} (known: {', '.join(sorted(self.plant.lines))})")
        station = line.machines.get(raw["station"])
        if station is None:
            raise UnknownLineError(f"line {line.id!r} has no station {raw['station']!r} "
                                   f"(known: {', '.join(sorted(line.machines))})")
        verdict = raw["verdict"].strip().lower()
        if verdict not in ("ok", "defective", "abstained"):
            raise InvalidValueError(f"verdict {raw['verdict']!r} is neither ok nor defective (nor abstained)")
        # abstained: the detector declined to judge the item; passed on as "not judged" (neither defect nor good)
        if verdict == "abstained" and raw["defects"]:
            raise InvalidValueError("an abstention carries no defects")
        for defect in raw["defects"]:
            confidence = defect["confidence"]
            if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
                raise InvalidValueError(f"defect {defect['defect_class']!r}: confidence {confidence} is not in [0, 1]")
            if defect["box"] and len(defect["box"]) != 4:
                raise InvalidValueError(f"defect {defect['defect_class']!r}: box must be [x0, y0, x1, y1], "
                                        f"got {defect['box']}")
        upstream = self._upstream.get(station.entity_id)
        if upstream is None:
            upstream = self._upstream[station.entity_id] = self.graph.upstream(station.entity_id)
        out = dict(raw)
        out.setdefault("abstention", None)
        out.update(captured_at=to_epoch_ms(raw["captured_at"], "captured_at"),
                   inspected_at=to_epoch_ms(raw["inspected_at"], "inspected_at"), verdict=verdict,
                   line_entity_id=line.entity_id, station_entity_id=station.entity_id, upstream=list(upstream))
        self._remember(station.entity_id, "lastInspection", {"item_id": raw["item_id"], "verdict": verdict,
                                                             "defects": [d["defect_class"] for d in raw["defects"]]},
                       None, out["captured_at"])
        return out
