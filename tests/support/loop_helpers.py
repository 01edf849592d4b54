"""Records, a handler and a loop runner shared by the platform's integration tests and the loop benchmarks."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import fastavro

from lineguard.avro import AvroSerde
from lineguard.kafka import ConsumerLoop, Output, Record


def avro_roundtrip(serde: AvroSerde, codec: str) -> Callable[[str, bytes], bytes]:
    """The per-record Avro work of the benchmarks' bare loops: decode a record of `topic` and encode it again.

    `codec="fastavro"`: by hand, as a consumer written with fastavro does (`schemaless_reader` and
    `schemaless_writer` on the topic's parsed schema, the single-object header kept): the budgets' baseline.
    `codec="lineguard"`: through Lineguard's serde (its generated codec), what the shared loop runs."""
    if codec == "lineguard":
        return lambda topic, value: serde.encode(topic, serde.decode(topic, value))
    if codec != "fastavro":
        raise ValueError(f"codec is 'fastavro' or 'lineguard', not {codec!r}")
    parsed = {topic: serde.parsed_schema(topic) for topic in serde.topics()}

    def roundtrip(topic: str, value: bytes) -> bytes:
        schema = parsed[topic]
        record = fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, None)
        out = io.BytesIO()
        out.write(value[:10])
        fastavro.schemaless_writer(out, schema, record)
        return out.getvalue()

    return roundtrip


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
