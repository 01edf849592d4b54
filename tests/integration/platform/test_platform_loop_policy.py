"""The loop's dead-letter policy against Tansu: a bad record too big for its dead-letter topic, and a handler bug."""

from __future__ import annotations

import threading
import uuid

import pytest
from loop_helpers import raw_reading, run_until_consumed, to_observation
from test_platform_kafka import read_all

from lineguard.kafka import DLQ_TRUNCATED_HEADER, ConsumerLoop, Producer, dlq_headers

pytestmark = pytest.mark.integration


def test_a_2mb_bad_record_is_dead_lettered_truncated_and_the_loop_goes_on(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)
    # Another producer with a larger limit wrote it; the broker took it. Its dead letter (the same bytes plus the
    # reason headers) is more than this service's producer may send.
    big = Producer(settings, **{"message.max.bytes": 3_000_000})
    big.produce("raw.telemetry.v1", "line1-mixer", b"\xc3\x01" + b"\x00" * 2_000_000, trace=False)
    assert big.close() == 0
    producer = Producer(settings)
    for i in range(5):
        producer.produce("raw.telemetry.v1", "line1-mixer", raw_reading(i))
    assert producer.close() == 0

    loop = ConsumerLoop(settings, f"g-{uuid.uuid4()}", ["raw.telemetry.v1"], to_observation)
    run_until_consumed(loop, 6, timeout=60)
    assert loop.failure is None
    assert len(read_all(settings, "line.observations.v1", expect=5)) == 5
    (dead,) = read_all(settings, "raw.telemetry.v1.dlq", expect=1)
    headers = dlq_headers(dead.headers())
    assert headers[DLQ_TRUNCATED_HEADER] == "true"
    assert headers["lineguard.dlq.original.value.bytes"] == str(2_000_002)
    assert headers["__connect.errors.offset"] == "0" and headers["__connect.errors.stage"] == "deserialize"
    assert 0 < len(dead.value()) <= 64 * 1024


def test_a_handler_bug_is_not_dead_lettered_and_stops_the_loop(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)
    producer = Producer(settings)
    for i in range(10):
        producer.produce("raw.telemetry.v1", "line1-mixer", raw_reading(i))
    assert producer.close() == 0

    def buggy(record):
        if record.value["id"] == "r4":
            raise AttributeError("'NoneType' object has no attribute 'unit'")
        return to_observation(record)

    loop = ConsumerLoop(settings, f"g-{uuid.uuid4()}", ["raw.telemetry.v1"], buggy, retry_backoff_s=0.05)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the loop did not stop on the bug"
    assert "AttributeError" in loop.failure
    assert read_all(settings, "raw.telemetry.v1.dlq", expect=0, timeout=1) == []
