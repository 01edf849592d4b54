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


def test_a_topic_written_to_all_the_time_is_read_to_where_it_ended_when_the_read_began(make_settings, create_topics):
    """A running line never leaves its topics quiet, and the reader never sees end-of-partition: the read stops
    once it passes the end the first fetch reported, with every record that was there before it began."""
    import threading

    settings = make_settings()
    create_topics(settings)
    _produce(settings, 500)
    stop = threading.Event()

    def keep_writing() -> None:
        producer = Producer(settings)
        i = 500
        while not stop.is_set():
            producer.produce(topics.RAW_TELEMETRY, "line1-mixer", raw_reading(i))
            producer.poll(0)
            i += 1
            time.sleep(0.002)
        producer.close()

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        ids = [r.value["id"] for r in read_topic(settings, topics.RAW_TELEMETRY, timeout_s=30)]
        assert time.monotonic() - started < 20
    finally:
        stop.set()
        writer.join(10)
    assert ids[:500] == [f"r{i}" for i in range(500)]
