"""Records, a handler and a loop runner shared by the platform's integration tests and the loop benchmarks."""

from __future__ import annotations

import threading
import time

from lineguard.kafka import ConsumerLoop, Output, Record


def run_until_consumed(loop: ConsumerLoop, expected: int, timeout: float = 600.0) -> float:
    """Run `loop` on its own thread until it has consumed `expected` records (or `timeout` passes), then stop it
    and wait for its shutdown. Returns time.perf_counter() at the moment the count was reached."""
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while loop.stats.consumed < expected and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.005)
    reached = time.perf_counter()
    loop.stop()
    thread.join(60)
    assert not thread.is_alive(), "the consumer loop did not shut down within 60 s"
    return reached


def raw_reading(i: int, device: str = "line1-mixer") -> dict:
    return {
        "id": f"r{i}", "device": device, "metric": "torque", "value": float(i), "unit": "Nm",
        "observed_at": 1_700_000_000_000 + i, "received_at": 1_700_000_000_100 + i,
        "source": {"protocol": "mqtt", "device": device, "address": "plant/line1/mixer/torque",
                   "position": str(i), "received_by": None},
        "attributes": {},
    }


def to_observation(record: Record) -> list[Output]:
    """A stand-in transformation: one raw reading -> one observation (decode, re-encode, produce)."""
    raw = record.value
    obs = {
        "id": raw["id"], "line_id": "line1", "entity_id": "urn:ngsi-ld:Machine:line1-mixer", "entity_type": "Machine",
        "sensor_id": "urn:ngsi-ld:Sensor:line1-mixer-torque", "attribute": raw["metric"], "value": raw["value"],
        "unit_code": "NU", "observed_at": raw["observed_at"], "quality": [], "raw_id": raw["id"],
        "source": raw["source"],
    }
    return [Output("line.observations.v1", "line1", obs)]
