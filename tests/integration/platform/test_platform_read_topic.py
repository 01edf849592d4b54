"""read_topic against Tansu: to the true end, even where the broker's high watermark is low."""

from __future__ import annotations

import time

import pytest
from loop_helpers import raw_reading

from lineguard import topics
from lineguard.kafka import AtTime, Producer, Tail, new_consumer, read_topic

pytestmark = pytest.mark.integration


def _produce(settings, count: int, start: int = 0, **conf) -> None:
    producer = Producer(settings, **conf)
    for i in range(start, start + count):
        producer.produce(topics.RAW_TELEMETRY, "line1-mixer", raw_reading(i))  # one key: one partition
    assert producer.close() == 0


def test_reads_every_record_of_one_big_batch_to_the_end(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)
    # Long linger: the 1,500 records travel in few large batches, where Tansu's watermark falls short.
    _produce(settings, 1500, **{"linger.ms": 500, "batch.num.messages": 10000})
    started = time.monotonic()
    records = list(read_topic(settings, topics.RAW_TELEMETRY))
    assert [r.value["id"] for r in records] == [f"r{i}" for i in range(1500)]
    assert records[0].topic == topics.RAW_TELEMETRY and records[0].raw_value
    assert time.monotonic() - started < 20


def test_tail_start_at_time_raw_bytes_and_a_missing_topic(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)
    _produce(settings, 20)
    time.sleep(0.05)
    since = int(time.time() * 1000)
    _produce(settings, 5, start=20)
    assert [r.value["id"] for r in read_topic(settings, topics.RAW_TELEMETRY, start=AtTime(since))] == \
        [f"r{i}" for i in range(20, 25)]
    tail = list(read_topic(settings, topics.RAW_TELEMETRY, start=Tail(3), decode=False))
    assert len(tail) == 3 and all(isinstance(r.value, bytes) for r in tail)
    assert list(read_topic(settings, "no.such.topic.v1")) == []


def test_clients_carry_the_service_client_id(make_settings):
    settings = make_settings(service_name="reader-test")
    consumer = new_consumer(settings, "g")
    try:
        assert consumer.list_topics(timeout=10).topics is not None
    finally:
        consumer.close()
