"""The shared Kafka runtime against a real broker (Tansu)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from loop_helpers import raw_reading, run_until_consumed, to_observation
from polling import wait_for
from prometheus_client import REGISTRY
from schema_samples import samples

from lineguard.avro import AvroSerde
from lineguard.catalog import admin_client, bootstrap_topics, load_catalog
from lineguard.kafka import ConsumerLoop, Producer, dlq_headers

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def read_all(settings, topic: str, expect: int, timeout: float = 30.0) -> list:
    """Read `topic` from the beginning (assigned partitions, no group join) until `expect` records arrived."""
    full = settings.topic(topic)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"read-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(full, timeout=10).topics[full].partitions
    consumer.assign([TopicPartition(full, p, OFFSET_BEGINNING) for p in partitions])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            out.extend(m for m in consumer.consume(500, 0.2) if m.error() is None)
        # a little longer, to catch unexpected extra records
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            out.extend(m for m in consumer.consume(500, 0.1) if m.error() is None)
    finally:
        consumer.close()
    return out


def test_round_trip_of_every_schema_in_both_wire_formats(make_settings, create_topics):
    single = make_settings()
    create_topics(single)
    for registry in (None, "mock://platform-tests"):
        settings = make_settings(schema_registry_url=registry) if registry else single
        producer = Producer(settings, AvroSerde(registry_url=registry))
        records = samples(producer.serde)
        for topic, record in records.items():
            producer.produce(topic, "k", record)
        assert producer.close() == 0
        for topic, record in records.items():
            got = read_all(settings, topic, expect=1 if registry is None else 2)
            first_byte = {m.value()[0] for m in got}
            assert all(producer.serde.decode(topic, m.value()) == record for m in got), topic
            assert (0xC3 in first_byte) and (registry is None or 0x00 in first_byte)


def test_bad_records_go_to_the_dlq_with_connect_headers_while_good_ones_flow(make_settings, create_topics):
    settings = make_settings(service_name="loop-test")
    create_topics(settings)
    producer = Producer(settings)
    for i in range(50):
        producer.produce("raw.telemetry.v1", "line1-mixer", raw_reading(i))
    # Same key as the good records, so the same partition: offsets 50 and 51.
    producer.produce("raw.telemetry.v1", "line1-mixer", b"\x42not avro at all")
    producer.produce("raw.telemetry.v1", "line1-mixer", b"\xc3\x01" + b"\x99" * 8 + b"\x02x")
    for i in range(50, 100):
        producer.produce("raw.telemetry.v1", "line1-mixer", raw_reading(i))
    assert producer.flush() == 0

    loop = ConsumerLoop(settings, f"g-{uuid.uuid4()}", ["raw.telemetry.v1"], to_observation)
    run_until_consumed(loop, 102, timeout=30)
    assert loop.stats.dead_lettered == 2

    observations = read_all(settings, "line.observations.v1", expect=100)
    ids = sorted(int(loop.serde.decode("line.observations.v1", m.value())["id"][1:]) for m in observations)
    assert ids == list(range(100))

    dead = read_all(settings, "raw.telemetry.v1.dlq", expect=2)
    by_error = {dlq_headers(m.headers())["__connect.errors.exception.class.name"]: m for m in dead}
    assert set(by_error) == {"CorruptPayloadError", "UnknownSchemaError"}
    garbage = dlq_headers(by_error["CorruptPayloadError"].headers())
    assert by_error["CorruptPayloadError"].value() == b"\x42not avro at all"  # original bytes, untouched
    assert by_error["CorruptPayloadError"].key() == b"line1-mixer"  # original key
    assert garbage["__connect.errors.topic"] == settings.topic("raw.telemetry.v1")
    assert garbage["__connect.errors.exception.class.name"] == "CorruptPayloadError"
    assert "unknown wire format" in garbage["__connect.errors.exception.message"]
    assert garbage["lineguard.service"] == "loop-test"
    assert int(garbage["__connect.errors.offset"]) == 50
    unknown = dlq_headers(by_error["UnknownSchemaError"].headers())
    assert int(unknown["__connect.errors.offset"]) == 51
    assert "fingerprint" in unknown["__connect.errors.exception.message"]


def test_handler_exception_dead_letters_only_that_record(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)
    producer = Producer(settings)
    for i in range(20):
        producer.produce("raw.telemetry.v1", "line1-mixer", raw_reading(i))
    producer.flush()

    def picky(record):
        if record.value["id"] == "r7":
            raise ValueError("reading r7 is impossible")
        return to_observation(record)

    loop = ConsumerLoop(settings, f"g-{uuid.uuid4()}", ["raw.telemetry.v1"], picky, dead_letter_on=(ValueError,))
    run_until_consumed(loop, 20, timeout=30)
    assert len(read_all(settings, "line.observations.v1", expect=19)) == 19
    dead = read_all(settings, "raw.telemetry.v1.dlq", expect=1)
    headers = dlq_headers(dead[0].headers())
    assert headers["__connect.errors.stage"] == "process"
    assert headers["__connect.errors.exception.message"] == "reading r7 is impossible"


class HoldingSink:
    """A sink that never makes anything durable (a lake whose store is down): it holds every offset it saw."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, int], int] = {}

    def write(self, records) -> None:
        for record in records:
            self.first.setdefault((record.topic, record.partition), record.offset)

    def held_offsets(self) -> dict[tuple[str, int], int]:
        return dict(self.first)

    def flush(self) -> None:
        pass


def _gauge_total(service: str, what: str, topic: str) -> float:
    name = f"lineguard_{service}_{what}"
    return sum(sample.value for metric in REGISTRY.collect() if metric.name == name
               for sample in metric.samples if sample.labels.get("topic") == topic)


@pytest.mark.parametrize("sink", [None, HoldingSink], ids=["outputs acknowledged", "sink holds the rows"])
def test_lag_and_uncommitted_records_are_reported_per_partition(make_settings, create_topics, sink):
    service = f"lag{uuid.uuid4().hex[:6]}"
    settings = make_settings(service_name=service)
    create_topics(settings)
    producer = Producer(settings)
    for i in range(120):
        producer.produce("raw.telemetry.v1", f"dev{i % 7}", raw_reading(i, device=f"dev{i % 7}"))
    producer.flush()

    def slow_observation(record):
        time.sleep(0.02)  # about 2.5 s for all: the lag is seen while it shrinks
        return to_observation(record)

    loop = ConsumerLoop(settings, f"g-{uuid.uuid4()}", ["raw.telemetry.v1"], slow_observation,
                        sink=sink() if sink else None, batch_size=10)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        lag_seen = 0.0
        deadline = time.monotonic() + 30
        while loop.stats.consumed < 120 and thread.is_alive() and time.monotonic() < deadline:
            lag_seen = max(lag_seen, _gauge_total(service, "consumer_lag_records", "raw.telemetry.v1"))
            time.sleep(0.05)
        assert 0 < lag_seen < 120
        held = 120 if sink else 0
        assert wait_for(lambda: _gauge_total(service, "uncommitted_records", "raw.telemetry.v1") == held, timeout=5)
        assert wait_for(lambda: _gauge_total(service, "consumer_lag_records", "raw.telemetry.v1") == 0, timeout=5)
    finally:
        loop.stop()
        thread.join(30)


def test_trace_context_travels_from_producer_to_output(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)
    producer = Producer(settings)
    producer.produce("raw.telemetry.v1", "line1-mixer", raw_reading(1))
    producer.flush()
    source = read_all(settings, "raw.telemetry.v1", expect=1)[0]
    traceparent = dict(source.headers())["traceparent"].decode()
    assert traceparent.startswith("00-") and len(traceparent.split("-")[1]) == 32
    loop = ConsumerLoop(settings, f"g-{uuid.uuid4()}", ["raw.telemetry.v1"], to_observation)
    run_until_consumed(loop, 1, timeout=30)
    out = read_all(settings, "line.observations.v1", expect=1)[0]
    assert dict(out.headers())["traceparent"].decode().split("-")[1] == traceparent.split("-")[1]


def test_async_send_returns_after_acknowledgement_and_fails_clearly(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)

    async def scenario():
        producer = Producer(settings)
        msg = await producer.send("raw.telemetry.v1", "line1-mixer", raw_reading(1))
        assert msg.offset() >= 0
        many = await producer.send_many([("raw.telemetry.v1", "d", raw_reading(i)) for i in range(10)])
        assert len(many) == 10
        producer.close()

    asyncio.run(scenario())


def _worker_env(settings, group: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix, "LOOP_WORKER_GROUP": group,
            "LINEGUARD_SERVICE_NAME": "loop-worker", **extra}


def test_sigkill_mid_batch_then_restart_loses_nothing(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)
    total = 600
    producer = Producer(settings)
    for i in range(total):
        producer.produce("raw.telemetry.v1", f"dev{i % 7}", raw_reading(i, device=f"dev{i % 7}"))
    producer.flush()
    group = f"g-{uuid.uuid4()}"
    worker = [sys.executable, str(HERE / "loop_worker.py")]
    for delay_s in (4.5, 3.5):
        proc = subprocess.Popen(worker, env=_worker_env(settings, group, LOOP_WORKER_DELAY_S="0.004"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)  # no shutdown, no commit
        proc.wait()
    proc = subprocess.Popen(worker, env=_worker_env(settings, group), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        observations = read_all(settings, "line.observations.v1", expect=total, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    ids = {AvroSerde().decode("line.observations.v1", m.value())["id"] for m in observations}
    assert ids == {f"r{i}" for i in range(total)}  # every input reflected at least once


def test_sigterm_commits_and_exits_within_the_grace_period(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)
    producer = Producer(settings)
    for i in range(200):
        producer.produce("raw.telemetry.v1", "line1-mixer", raw_reading(i))
    producer.flush()
    group = f"g-{uuid.uuid4()}"
    proc = subprocess.Popen([sys.executable, str(HERE / "loop_worker.py")], env=_worker_env(settings, group),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert len(read_all(settings, "line.observations.v1", expect=200)) == 200
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert time.monotonic() - started < 10  # well inside a 30 s terminationGracePeriodSeconds
    assert '"event":"consumer_stopped"' in output
    # The committed offsets cover everything: for each partition, one past its last record.
    # (Computed from the records themselves: Tansu's ListOffsets high watermark is not reliable.)
    expected = {}
    for msg in read_all(settings, "raw.telemetry.v1", expect=200):
        expected[msg.partition()] = max(expected.get(msg.partition(), 0), msg.offset() + 1)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    full = settings.topic("raw.telemetry.v1")
    committed = consumer.committed([TopicPartition(full, p) for p in expected], timeout=10)
    consumer.close()
    assert {tp.partition: tp.offset for tp in committed} == expected


def test_topic_bootstrap_twice_changes_nothing(make_settings):
    settings = make_settings()
    catalog = load_catalog()
    admin = admin_client(settings.kafka_bootstrap)
    first = bootstrap_topics(admin, catalog, settings.topic_prefix)
    assert sorted(first.created) == sorted(settings.topic(n) for n in catalog.names())
    second = bootstrap_topics(admin, catalog, settings.topic_prefix)
    assert second.created == []
    assert sorted(second.existing) == sorted(first.created)
    assert second.drift == []
    meta = admin.list_topics(timeout=10)
    assert len(meta.topics[settings.topic("raw.telemetry.v1")].partitions) == 6


def test_producer_replaces_itself_after_a_fatal_error(make_settings, create_topics):
    from confluent_kafka import KafkaError

    settings = make_settings()
    create_topics(settings)
    producer = Producer(settings)
    producer.produce("raw.telemetry.v1", "line1-mixer", raw_reading(1))
    assert producer.flush() == 0
    first = producer._producer
    # What librdkafka reports when an idempotent producer has been fenced for good.
    producer.note_delivery_error(KafkaError(KafkaError.PRODUCER_FENCED, "fenced", fatal=True))
    producer.produce("raw.telemetry.v1", "line1-mixer", raw_reading(2))
    assert producer._producer is not first
    assert producer.close() == 0
    ids = {AvroSerde().decode("raw.telemetry.v1", m.value())["id"]
           for m in read_all(settings, "raw.telemetry.v1", expect=2)}
    assert ids == {"r1", "r2"}


def test_inputs_without_trace_context_share_one_batch_span(make_settings, create_topics):
    settings = make_settings()
    create_topics(settings)
    producer = Producer(settings)
    for i in range(5):  # raw bytes, produced without a span: no traceparent header
        producer.produce("raw.telemetry.v1", "line1-mixer", producer.serde.encode("raw.telemetry.v1",
                                                                                 raw_reading(i)), trace=False)
    producer.flush()
    loop = ConsumerLoop(settings, f"g-{uuid.uuid4()}", ["raw.telemetry.v1"], to_observation, batch_size=100)
    run_until_consumed(loop, 5, timeout=30)
    outputs = read_all(settings, "line.observations.v1", expect=5)
    trace_ids = {dict(m.headers())["traceparent"].decode().split("-")[1] for m in outputs}
    assert len(outputs) == 5 and len(trace_ids) <= loop.stats.batches
