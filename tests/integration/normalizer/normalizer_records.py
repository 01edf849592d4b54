"""A known set of raw records for the normalizer's integration tests and its benchmark.

Readings cover every numeric sensor of the cookie line (some in foreign units), the conveyor state, alarms raised
and cleared, inspections, and a few records that must be dead-lettered (unknown device, impossible action).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lineguard.plant import PlantModel

T0 = 1_764_400_000_000  # 2025-11-29T07:06:40Z


@dataclass
class RawSet:
    telemetry: list[dict] = field(default_factory=list)
    alarms: list[dict] = field(default_factory=list)
    inspections: list[dict] = field(default_factory=list)
    bad_telemetry: list[dict] = field(default_factory=list)
    bad_alarms: list[dict] = field(default_factory=list)

    def messages(self) -> list[tuple[str, str, dict]]:
        """(topic, key, value) in a mixed order, bad records sprinkled in."""
        out: list[tuple[str, str, dict]] = []
        bad_t, bad_a = list(self.bad_telemetry), list(self.bad_alarms)
        for i, reading in enumerate(self.telemetry):
            out.append(("raw.telemetry.v1", reading["device"], reading))
            if i % 50 == 0 and i // 50 < len(self.alarms):
                alarm = self.alarms[i // 50]
                out.append(("raw.alarms.v1", alarm["device"], alarm))
            if i % 20 == 0 and i // 20 < len(self.inspections):
                inspection = self.inspections[i // 20]
                out.append(("raw.inspections.v1", inspection["line_id"], inspection))
            if i % 300 == 150 and bad_t:
                bad = bad_t.pop()
                out.append(("raw.telemetry.v1", bad["device"], bad))
            if i % 300 == 250 and bad_a:
                bad = bad_a.pop()
                out.append(("raw.alarms.v1", bad["device"], bad))
        seen = {id(v) for _, _, v in out}
        out += [("raw.alarms.v1", a["device"], a) for a in self.alarms if id(a) not in seen]
        out += [("raw.inspections.v1", x["line_id"], x) for x in self.inspections if id(x) not in seen]
        out += [("raw.telemetry.v1", b["device"], b) for b in bad_t]
        out += [("raw.alarms.v1", b["device"], b) for b in bad_a]
        return out


def _source(device: str, address: str, position: int) -> dict:
    return {"protocol": "mqtt", "device": device, "address": address, "position": str(position),
            "received_by": "ingest-test"}


def make_raw_set(plant: PlantModel, readings: int = 2000, alarms: int = 40, inspections: int = 100,
                 bad: int = 10, step_ms: int = 250, tag: str = "") -> RawSet:
    """`readings` readings spread over every sensor, `step_ms` apart in record time."""
    sensors = [s for s in plant.sensors()]
    raw = RawSet()
    for i in range(readings):
        sensor = sensors[i % len(sensors)]
        at = T0 + i * step_ms
        if sensor.kind == "state":
            value: object = "running"
            unit = None
        else:
            mid = (sensor.normal.min + sensor.normal.max) / 2 if sensor.normal else 10.0
            value, unit = mid, None
            if sensor.unit == "CEL" and i % 3 == 0:
                value, unit = mid * 9 / 5 + 32, "degF"
            elif sensor.unit == "RPM" and i % 2 == 0:
                value, unit = mid / 60, "Hz"
        raw.telemetry.append({
            "id": f"{tag}t{i}", "device": sensor.device, "metric": sensor.metric, "value": value, "unit": unit,
            "observed_at": at, "received_at": at + 40, "source": _source(sensor.device, f"plant/{sensor.device}", i),
            "attributes": {},
        })
    alarm_devices = ["line1-oven", "line1-cooling-conveyor", "line1-mixer"]
    for i in range(alarms):
        device = alarm_devices[i % 3]
        at = T0 + i * 50 * step_ms
        raw.alarms.append({
            "id": f"{tag}a{i}", "device": device, "alarm_type": f"{device.upper()}_FAULT",
            "action": "raise" if (i // 3) % 3 != 2 else "clear", "severity": "major", "message": f"alarm {i}",
            "observed_at": at, "received_at": at + 10, "source": _source(device, f"plant/{device}/alarms", i),
        })
    for i in range(inspections):
        at = T0 + i * 20 * step_ms
        defective = i % 7 == 0
        raw.inspections.append({
            "id": f"{tag}i{i}", "item_id": f"item{i}", "line_id": "line1", "station": "detector",
            "captured_at": at, "inspected_at": at + 5, "verdict": "defective" if defective else "ok",
            "defects": [{"defect_class": "burnt", "confidence": 0.9, "box": [1, 2, 30, 40], "reason": None}]
            if defective else [],
            "image_uri": f"file:///frames/item{i}.png",
            "model": {"provider": "local", "model_id": "cookie-detector", "version": "1"}, "latency_ms": 3.0,
        })
    for i in range(bad):
        at = T0 + i * 1000
        raw.bad_telemetry.append({
            "id": f"{tag}bad-t{i}", "device": "ghost-device", "metric": "temperature", "value": 1.0, "unit": None,
            "observed_at": at, "received_at": at, "source": _source("ghost-device", "plant/ghost", i),
            "attributes": {},
        })
        raw.bad_alarms.append({
            "id": f"{tag}bad-a{i}", "device": "line1-oven", "alarm_type": "X", "action": "explode",
            "severity": None, "message": None, "observed_at": at, "received_at": at,
            "source": _source("line1-oven", "plant/oven/alarms", i),
        })
    return raw
