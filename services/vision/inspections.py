"""Inspections (the `raw.inspections.v1` record) and where they go.

`build_inspection` turns one detection into the Avro record (schemas/raw.inspections.v1.avsc): a judgement
(verdict ok or defective) or an abstention (verdict abstained, `abstention` says why); an
`InspectionSink` publishes it and returns only once it is durably written. `KafkaInspectionSink` is the
real one (lineguard.kafka.Producer, acknowledged by the broker); `MemoryInspectionSink` serves unit tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from lineguard import topics
from services.vision.detector import Detection

TOPIC = topics.RAW_INSPECTIONS
_ID_NAMESPACE = uuid.UUID("5b0f3a52-6c1e-4e59-9d7c-3f1c2b8a9e10")


@dataclass(frozen=True)
class ImageMeta:
    """What a camera says about one image."""

    line_id: str
    station: str
    item_id: str
    captured_at: datetime  # timezone-aware, UTC


def inspection_id(line_id: str, station: str, item_id: str) -> str:
    """Deterministic: the same item at the same station always gets the same id (a retry is a duplicate)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{line_id}\x1f{station}\x1f{item_id}"))


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def build_inspection(meta: ImageMeta, detection: Detection, image_uri: str,
                     inspected_at: datetime | None = None) -> dict[str, Any]:
    inspected_at = inspected_at or datetime.now(UTC)
    return {
        "id": inspection_id(meta.line_id, meta.station, meta.item_id),
        "item_id": meta.item_id,
        "line_id": meta.line_id,
        "station": meta.station,
        "captured_at": _millis(meta.captured_at),
        "inspected_at": _millis(inspected_at),
        "verdict": detection.verdict,
        "defects": [d.to_dict() for d in detection.defects],
        "image_uri": image_uri,
        "model": detection.model.to_dict(),
        "latency_ms": round(detection.latency_ms, 3),
        # an abstention is published too, as a distinct result: not a defect, not good, "not judged"
        "abstention": ({"reason": detection.abstention or "unfamiliar", "message": detection.message}
                       if detection.abstained else None),
    }


class InspectionSink(Protocol):
    async def publish(self, inspection: dict[str, Any]) -> None:
        """Write one inspection (keyed by its line id); return once it is durably written."""
        ...

    async def close(self) -> None: ...


class MemoryInspectionSink:
    """Keeps inspections in a list (unit tests, and a dry run without Kafka)."""

    def __init__(self) -> None:
        self.inspections: list[dict[str, Any]] = []

    async def publish(self, inspection: dict[str, Any]) -> None:
        self.inspections.append(inspection)

    async def close(self) -> None:
        return None


class KafkaInspectionSink:
    """Publishes to raw.inspections.v1 with the shared runtime's producer; returns after the broker's ack."""

    def __init__(self, producer: Any, topic: str = TOPIC) -> None:
        self.producer = producer
        self.topic = topic

    async def publish(self, inspection: dict[str, Any]) -> None:
        await self.producer.send(self.topic, inspection["line_id"], inspection)

    async def close(self) -> None:
        import asyncio

        await asyncio.to_thread(self.producer.close)
