"""The subscriber guide's example (examples/subscriber/subscribe.py) reads what Lineguard writes, on a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lineguard.kafka import Producer

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "subscriber" / "subscribe.py"


def test_the_example_subscriber_decodes_records_a_service_wrote(make_settings, create_topics) -> None:
    prefix = f"sub{uuid.uuid4().hex[:6]}."
    settings = make_settings(topic_prefix=prefix)
    create_topics(settings)
    producer = Producer(settings)
    record = _complete(producer, "feedback.v1", {"recommendation_id": "rec-1", "line_id": "line1"})
    producer.produce("feedback.v1", "rec-1", record)
    assert producer.flush(30) == 0
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "feedback.v1", "--bootstrap", settings.kafka_bootstrap, "--prefix", prefix,
         "--group", "test.subscriber", "--max", "1", "--idle-timeout", "60"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0]["key"] == "rec-1"
    assert lines[0]["value"]["recommendation_id"] == "rec-1"


def _complete(producer: Producer, topic: str, partial: dict) -> dict:
    """Fill the schema's other fields with their defaults or a value of their type (the schema may grow)."""
    from schema_samples import sample

    full = sample(producer.serde.schema(topic))
    full.update(partial)
    return full
