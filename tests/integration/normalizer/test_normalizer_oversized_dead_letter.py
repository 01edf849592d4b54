"""A 2 MB bad raw record (Kafka took it; the dead-letter topic's producer would refuse it whole) is dead-lettered
truncated and marked, and the normalizer goes on: the reading behind it is normalized, the service stays up, and
a restart does not meet the record again (no crash loop)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from normalizer_process import NormalizerProcess, normalizer_env
from normalizer_records import T0
from polling import wait_for

from lineguard.kafka import Producer, dlq_headers, read_topic
from lineguard.kafka.deadletters import DLQ_TRUNCATED_HEADER
from lineguard.settings import Settings

pytestmark = pytest.mark.integration

BLOB = 2 * 1024 * 1024


def reading(rid: str, device: str, **extra: object) -> dict:
    return {"id": rid, "device": device, "metric": "zone1_temperature", "value": 180.0, "unit": "CEL",
            "observed_at": T0, "received_at": T0 + 10,
            "source": {"protocol": "mqtt", "device": device, "address": "t", "position": None, "received_by": None},
            "attributes": {}, **extra}


def test_a_2mb_bad_record_is_dead_lettered_truncated_and_the_loop_goes_on(
        make_settings: Callable[..., Settings], create_topics: Callable[[Settings], None], tmp_path: Path) -> None:
    settings = make_settings()
    create_topics(settings)
    producer = Producer(settings, **{"message.max.bytes": 8 * 1024 * 1024})
    producer.produce("raw.telemetry.v1", "line1-oven",
                     reading("huge", "ghost-device", attributes={"blob": "x" * BLOB}))  # unknown device: bad input
    producer.produce("raw.telemetry.v1", "line1-oven", reading("after", "line1-oven"))
    assert producer.close(20) == 0

    service = NormalizerProcess(normalizer_env(settings, LINEGUARD_LAKE_ENABLED="false",
                                               LINEGUARD_GROUP_ID="normalizer-huge"), tmp_path / "normalizer.log")
    try:
        service.start()
        service.wait_ready()
        assert wait_for(lambda: service.records_in() >= 2, timeout=40), service.tail()
        observed = wait_for(lambda: any(r.value["raw_id"] == "after"
                                        for r in read_topic(settings, "line.observations.v1")), timeout=20)
        assert observed, service.tail()
        assert service.get("/livez")[0] == 200 and service.proc is not None and service.proc.poll() is None
        assert service.stop() == 0, service.tail()
        service.start()  # the record is behind the committed offset: no crash loop
        service.wait_ready()
        assert service.get("/livez")[0] == 200
        assert service.stop() == 0, service.tail()
    finally:
        service.ensure_stopped()
    dead = list(read_topic(settings, "raw.telemetry.v1.dlq", decode=False))
    assert len(dead) == 1
    headers = dlq_headers(dead[0].headers)
    assert headers[DLQ_TRUNCATED_HEADER] == "true"
    assert int(headers["lineguard.dlq.original.value.bytes"]) > BLOB
    assert len(dead[0].value) < 1024 * 1024
    assert "unknown device 'ghost-device'" in headers["__connect.errors.exception.message"]
    assert headers["__connect.errors.topic"] == settings.topic("raw.telemetry.v1")
