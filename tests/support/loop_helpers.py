"""Records and a handler shared by the platform's integration tests and the consumer-loop benchmark."""

from __future__ import annotations

from lineguard.kafka import Output, Record


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
