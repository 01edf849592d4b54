"""Drive a simulator scenario in process and turn it into unified line records, at the CPU's speed.

The simulator's physics (`simulator.model.CookieLine`) steps one simulated second at a time; its sensors are
read every `reading_every_s` (as the MQTT emitter does), its alarm tracker raises and clears alarms, every cookie
that passes the camera becomes an inspection with its true defects (a perfect detector), and every packaging
batch becomes three readings. Each of these becomes the raw record ingest or vision would publish, and the
normalizer's own mapping (`services.normalizer.mapping.Normalizer`) turns it into the unified record the advisor
consumes. Nothing is mocked but the transport.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from lineguard.plant import PlantModel
from services.normalizer.mapping import Normalizer
from simulator.clock import SimClock
from simulator.model import AlarmTracker, CookieLine
from simulator.scenarios import Scenario, load_scenario

# 2025-11-29T08:00:00Z: a multiple of 300 s, so the simulated run's windows start at 0, 300, 600... seconds.
RUN_START = datetime(2025, 11, 29, 8, 0, 0, tzinfo=UTC)
RUN_START_MS = int(RUN_START.timestamp() * 1000)


@dataclass
class UnifiedRecord:
    kind: str  # observations | alarms | inspections
    value: dict
    at_ms: int


def _source(protocol: str, device: str, position: int) -> dict:
    return {"protocol": protocol, "device": device, "address": f"sim/{device}", "position": str(position),
            "received_by": "scenario-driver"}


def run_scenario(plant: PlantModel, name: str, seed: int = 7, duration_s: float | None = None,
                 reading_every_s: float = 2.0) -> tuple[Scenario, Iterator[UnifiedRecord]]:
    line = next(iter(plant.lines.values()))
    scenario = load_scenario(name, line)
    return scenario, _records(plant, scenario, seed, duration_s or scenario.duration_s, reading_every_s)


def _records(plant: PlantModel, scenario: Scenario, seed: int, duration_s: float, reading_every_s: float
             ) -> Iterator[UnifiedRecord]:
    line = next(iter(plant.lines.values()))
    sim = CookieLine(plant, line.id, seed=seed, clock=SimClock(RUN_START, speed=0), scenario=scenario)
    alarms = AlarmTracker(line)
    normalizer = Normalizer(plant)
    counter = 0
    next_reading = 0.0
    while sim.now_s < duration_s:
        events = sim.step(1.0)
        t_ms = RUN_START_MS + int(sim.now_s * 1000)
        for cookie in events.detected:
            counter += 1
            defects = [{"defect_class": d, "confidence": 0.9, "box": [10, 10, 60, 60], "reason": None}
                       for d in sorted(cookie.defects)]
            raw = {"id": f"insp-{cookie.item_id}", "item_id": cookie.item_id, "line_id": line.id,
                   "station": "detector", "captured_at": t_ms, "inspected_at": t_ms + 20,
                   "verdict": "defective" if defects else "ok", "defects": defects,
                   "image_uri": f"file:///tmp/frames/{cookie.item_id}.png",
                   "model": {"provider": "local", "model_id": "truth", "version": None}, "latency_ms": 5.0}
            yield UnifiedRecord("inspections", normalizer.inspection(raw), t_ms)
        for batch in events.batches:
            for metric, value in (("packs", batch.packs), ("rejects", batch.rejects),
                                  ("mean_pack_weight", batch.mean_pack_weight_g)):
                counter += 1
                raw = {"id": f"{batch.batch_id}-{metric}", "device": f"{line.id}-packaging", "metric": metric,
                       "value": float(value), "unit": None, "observed_at": t_ms, "received_at": t_ms + 50,
                       "source": _source("sftp", f"{line.id}-packaging", counter), "attributes": {}}
                yield UnifiedRecord("observations", normalizer.observation(raw), t_ms)
        if sim.now_s + 1e-9 >= next_reading:
            next_reading += reading_every_s
            readings = sim.readings()
            for reading in readings:
                counter += 1
                raw = {"id": f"r{counter}", "device": reading.device, "metric": reading.metric,
                       "value": reading.value, "unit": None, "observed_at": t_ms, "received_at": t_ms + 30,
                       "source": _source("mqtt", reading.device, counter), "attributes": {}}
                yield UnifiedRecord("observations", normalizer.observation(raw), t_ms)
            for offset, alarm in enumerate(alarms.update(readings)):
                counter += 1
                raw = {"id": f"a{counter}", "device": alarm.device, "alarm_type": alarm.alarm,
                       "action": alarm.state, "severity": alarm.severity, "message": alarm.message,
                       "observed_at": t_ms, "received_at": t_ms + 30,
                       "source": _source("mqtt", alarm.device, counter)}
                yield UnifiedRecord("alarms", normalizer.alarm(raw, 0, counter * 10 + offset), t_ms)
