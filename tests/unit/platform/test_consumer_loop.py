"""The consumer loop on the in-memory broker (tests/support/fake_broker.py): rewind, held offsets, dead letters,
the dead-letter policy, the checkpoint and the sink hooks, in milliseconds. The same paths run against Tansu in
tests/integration/platform."""

from __future__ import annotations

import threading
import time

import pytest
from fake_broker import FakeBroker
from loop_helpers import raw_reading, run_until_consumed, to_observation

from lineguard.avro import AvroSerde
from lineguard.kafka import (
    DLQ_TRUNCATED_HEADER,
    ConsumerLoop,
    DlqLimit,
    Output,
    Producer,
    Record,
    Sink,
    dlq_headers,
)
from lineguard.settings import Settings

RAW = "raw.telemetry.v1"
OBS = "line.observations.v1"


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde(topic_prefix="t.")


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env(environ={}, service_name="loop-unit", topic_prefix="t.")


def feed(broker: FakeBroker, serde: AvroSerde, count: int, start: int = 0, partition: int = 0) -> None:
    for i in range(start, start + count):
        broker.produce("t." + RAW, serde.encode(RAW, raw_reading(i)), b"line1-mixer", partition=partition)


def make_loop(broker: FakeBroker, settings: Settings, serde: AvroSerde, handler=to_observation, **kw) -> ConsumerLoop:
    producer = Producer(settings, serde, client=broker.producer())
    kw.setdefault("retry_backoff_s", 0)
    return ConsumerLoop(settings, "g", [RAW], handler, producer=producer, consumer=broker.consumer("g"),
                        batch_size=kw.pop("batch_size", 10), **kw)


def run_until_stopped(loop: ConsumerLoop, timeout: float = 10.0) -> None:
    """Run until the loop stops by itself (a failure); fail the test if it does not."""
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        loop.stop()
        thread.join(10)
        pytest.fail("the loop did not stop by itself")


def committed(broker: FakeBroker, partition: int = 0) -> int | None:
    return broker.committed.get(("g", ("t." + RAW, partition)))


def ids(broker: FakeBroker, serde: AvroSerde, topic: str = OBS) -> list[str]:
    return [serde.decode(topic, m.value())["raw_id"] for m in broker.messages("t." + topic)]


def test_outputs_then_offsets_committed_on_shutdown(settings, serde):
    broker = FakeBroker()
    feed(broker, serde, 35)
    loop = make_loop(broker, settings, serde)
    run_until_consumed(loop, 35, timeout=10)
    assert ids(broker, serde) == [f"r{i}" for i in range(35)]
    assert committed(broker) == 35
    assert loop.stats.produced == 35 and loop.stats.batches == 4
    assert broker.journal[-2:] == ["commit", "close"]


def test_an_unacknowledged_output_rewinds_the_batch_and_nothing_is_lost(settings, serde):
    broker = FakeBroker()
    feed(broker, serde, 30)
    broker.fail_deliveries(3)  # three outputs of the first batch are not acknowledged
    loop = make_loop(broker, settings, serde)
    run_until_consumed(loop, 40, timeout=10)  # 30 records + the replayed batch
    assert loop.stats.redelivered_batches >= 1
    assert sorted(set(ids(broker, serde))) == sorted(f"r{i}" for i in range(30))
    assert committed(broker) == 30


def test_a_sink_holds_offsets_until_durable_and_gets_records_with_outputs(settings, serde):
    class Lake(Sink):
        def __init__(self) -> None:
            self.rows: list[tuple[int, str]] = []
            self.first: dict[tuple[str, int], int] = {}
            self.batches_done = 0
            self.durable = False

        def write(self, batch) -> None:
            for record, outputs in batch:
                self.rows.append((record.offset, outputs[0].value["raw_id"]))
                self.first.setdefault((record.topic, record.partition), record.offset)

        def on_batch_done(self) -> None:
            self.batches_done += 1

        def held_offsets(self):
            return {} if self.durable else dict(self.first)

        def flush(self) -> None:
            self.durable = True

    broker = FakeBroker()
    feed(broker, serde, 25)
    lake = Lake()
    loop = make_loop(broker, settings, serde, sink=lake)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while loop.stats.consumed < 25 and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.05)  # idle checkpoints run meanwhile: still nothing durable
    assert committed(broker) is None and "store" not in broker.journal
    loop.stop()
    thread.join(10)
    assert lake.rows == [(i, f"r{i}") for i in range(25)]
    assert lake.batches_done == 3
    assert committed(broker) == 25  # the final checkpoint flushed the sink, then committed


def test_a_sink_is_called_on_idle_polls_and_its_failure_does_not_stop_the_loop(settings, serde):
    class Ticking(Sink):
        def __init__(self) -> None:
            self.rows = 0
            self.idle_after_rows: list[int] = []

        def write(self, batch) -> None:
            self.rows += len(batch)

        def on_idle(self) -> None:
            self.idle_after_rows.append(self.rows)
            if len(self.idle_after_rows) == 2:
                raise RuntimeError("the sink's idle work failed once")

    broker = FakeBroker()
    feed(broker, serde, 15)
    sink = Ticking()
    loop = make_loop(broker, settings, serde, sink=sink, batch_timeout_s=0.01)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while len(sink.idle_after_rows) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    feed(broker, serde, 5, start=15)  # the loop still consumes after the failed idle call
    while sink.rows < 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    loop.stop()
    thread.join(10)
    assert len(sink.idle_after_rows) >= 5 and sink.idle_after_rows[-1] >= 15  # idle polls once the input ran dry
    assert sink.rows == 20 and loop.failure is None and committed(broker) == 20


def test_an_old_style_sink_still_gets_records(settings, serde):
    class OldSink:
        def __init__(self) -> None:
            self.seen: list[Record] = []

        def write(self, records) -> None:
            self.seen.extend(records)

        def held_offsets(self):
            return {}

        def flush(self) -> None:
            pass

    broker = FakeBroker()
    feed(broker, serde, 5)
    sink = OldSink()
    run_until_consumed(make_loop(broker, settings, serde, sink=sink), 5, timeout=10)
    assert [type(r) for r in sink.seen] == [Record] * 5


def test_undecodable_and_declared_bad_input_are_dead_lettered_with_connect_headers(settings, serde):
    broker = FakeBroker()
    feed(broker, serde, 3)
    broker.produce("t." + RAW, b"not avro", b"k")
    feed(broker, serde, 3, start=3)

    def picky(record: Record) -> list[Output]:
        if record.value["id"] == "r4":
            raise ValueError("r4 is impossible")
        return to_observation(record)

    loop = make_loop(broker, settings, serde, handler=picky, dead_letter_on=(ValueError,))
    run_until_consumed(loop, 7, timeout=10)
    dead = broker.messages("t." + RAW + ".dlq")
    assert [dlq_headers(m.headers())["__connect.errors.stage"] for m in dead] == ["deserialize", "process"]
    assert dlq_headers(dead[1].headers())["__connect.errors.exception.message"] == "r4 is impossible"
    assert dead[0].value() == b"not avro" and dead[0].key() == b"k"
    assert len(ids(broker, serde)) == 5 and committed(broker) == 7
    assert loop.failure is None


def test_a_non_declared_exception_is_not_dead_lettered_and_stops_the_loop(settings, serde):
    broker = FakeBroker()
    feed(broker, serde, 25)
    calls = {"r13": 0}

    def buggy(record: Record) -> list[Output]:
        if record.value["id"] == "r13":
            calls["r13"] += 1
            raise KeyError("missing_field")  # a bug, not bad input
        return to_observation(record)

    loop = make_loop(broker, settings, serde, handler=buggy, dead_letter_on=(ValueError,))
    run_until_stopped(loop)
    assert broker.messages("t." + RAW + ".dlq") == []
    assert calls["r13"] == 3  # retried, then stopped
    assert "KeyError" in loop.failure and "t.raw.telemetry.v1[0]@13" in loop.failure
    assert committed(broker) == 10  # the batch before it; never past the failing record


def test_a_transient_handler_failure_passes_on_retry(settings, serde):
    broker = FakeBroker()
    feed(broker, serde, 12)
    failures = iter([RuntimeError("database hiccup")])

    def flaky(record: Record) -> list[Output]:
        if record.value["id"] == "r5":
            exc = next(failures, None)
            if exc is not None:
                raise exc
        return to_observation(record)

    loop = make_loop(broker, settings, serde, handler=flaky)
    run_until_consumed(loop, 12 + 10, timeout=10)  # the first batch is read twice
    assert loop.failure is None and broker.messages("t." + RAW + ".dlq") == []
    assert sorted(set(ids(broker, serde))) == sorted(f"r{i}" for i in range(12))
    assert committed(broker) == 12


def test_dlq_limit_stops_a_loop_fed_only_garbage(settings, serde):
    broker = FakeBroker()
    for i in range(200):
        broker.produce("t." + RAW, b"garbage %d" % i, b"k")
    loop = make_loop(broker, settings, serde, dlq_limit=DlqLimit(max_consecutive=50))
    run_until_stopped(loop)
    assert "50 dead letters in a row" in loop.failure
    dead = len(broker.messages("t." + RAW + ".dlq"))
    assert 50 <= dead < 200  # stopped before everything went to .dlq
    assert committed(broker) is not None and committed(broker) < dead  # the tripping batch is not committed


def test_dlq_limit_ratio_over_a_window(settings, serde):
    broker = FakeBroker()
    for i in range(60):  # two bad records for every good one: never 50 in a row, but most of the window
        if i % 3 == 0:
            feed(broker, serde, 1, start=i)
        else:
            broker.produce("t." + RAW, b"garbage", b"k")
    loop = make_loop(broker, settings, serde, dlq_limit=DlqLimit(max_consecutive=50, max_ratio=0.5, window=30))
    run_until_stopped(loop)
    assert "of the last 30 records dead-lettered" in loop.failure


def test_a_dead_letter_too_large_for_its_topic_is_stored_truncated_and_the_loop_goes_on(settings, serde):
    broker = FakeBroker(max_message_bytes=100_000)
    broker.produce("t." + RAW, b"\xc3\x01" + b"x" * 99_900, b"k")  # fits the raw topic; with headers not the DLQ
    feed(broker, serde, 3, start=1)
    loop = make_loop(broker, settings, serde)
    run_until_consumed(loop, 4, timeout=10)
    (dead,) = broker.messages("t." + RAW + ".dlq")
    headers = dlq_headers(dead.headers())
    assert headers[DLQ_TRUNCATED_HEADER] == "true"
    assert headers["lineguard.dlq.original.value.bytes"] == "99902"
    assert headers["__connect.errors.offset"] == "0" and headers["__connect.errors.stage"] == "deserialize"
    assert dead.value() == (b"\xc3\x01" + b"x" * 99_900)[:64 * 1024]
    assert ids(broker, serde) == ["r1", "r2", "r3"] and committed(broker) == 4


def test_revoke_and_shutdown_run_the_same_checkpoint_in_order_and_hooks_see_partitions(settings, serde):
    broker = FakeBroker()
    journal = broker.journal

    class Recorder(Sink):
        """Holds the offsets of what it was given until flushed."""

        def __init__(self, name: str) -> None:
            self.name = name
            self.first: dict[tuple[str, int], int] = {}
            self.assigned: list = []
            self.revoked: list = []

        def write(self, batch) -> None:
            for record, _ in batch:
                self.first.setdefault((record.topic, record.partition), record.offset)

        def held_offsets(self):
            return dict(self.first)

        def flush(self) -> None:
            journal.append(f"{self.name} flush")
            self.first.clear()

        def on_assign(self, partitions) -> None:
            self.assigned.append(list(partitions))

        def on_revoke(self, partitions) -> None:
            journal.append(f"{self.name} revoked")
            self.revoked.append(list(partitions))

    steps = ["sink flush", "state flush", "producer flush", "store", "commit"]

    def checkpoint_steps(entries: list[str]) -> list[str]:
        """From the last sink flush on, repeated entries once, without what is not a checkpoint step."""
        tail = entries[len(entries) - 1 - entries[::-1].index("sink flush"):]
        out: list[str] = []
        for entry in tail:
            if entry in steps and (not out or out[-1] != entry):
                out.append(entry)
        return out

    def wait(predicate) -> None:
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.002)

    feed(broker, serde, 5)
    sink, state = Recorder("sink"), Recorder("state")
    loop = make_loop(broker, settings, serde, sink=sink, state=state)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    wait(lambda: loop.stats.consumed >= 5)
    assert sink.assigned == [[(RAW, 0)]] and state.assigned == [[(RAW, 0)]]
    assert committed(broker) is None  # held by the sink

    journal.clear()
    loop.consumer.request_rebalance()
    wait(lambda: len(sink.assigned) == 2)
    revoke = journal[:journal.index("sink revoked")]
    assert checkpoint_steps(revoke) == steps  # a rebalance: the checkpoint, then the hooks
    assert sink.revoked == [[(RAW, 0)]] and state.revoked == [[(RAW, 0)]]
    assert committed(broker) == 5

    feed(broker, serde, 5, start=5)
    wait(lambda: loop.stats.consumed >= 10)
    journal.clear()
    loop.stop()
    thread.join(10)
    assert checkpoint_steps(journal) == steps  # shutdown: the same steps in the same order
    assert journal[-1] == "close" and committed(broker) == 10


def test_partition_lag_is_exposed_without_reading_the_consumer(settings, serde):
    broker = FakeBroker()
    feed(broker, serde, 30)
    lags: list[dict] = []

    def observing(record: Record) -> list[Output]:
        if record.offset == 0:
            lags.append(loop.partition_lag())
        return to_observation(record)

    loop = make_loop(broker, settings, serde, handler=observing)
    run_until_consumed(loop, 30, timeout=10)
    assert lags == [{(RAW, 0): 30}]  # before the first record's batch is counted: all 30 not consumed


def test_the_loops_own_producer_gathers_outputs_for_the_configured_linger(serde):
    # Fuller batches halve the broker's CPU per record (bench/bench_scale.py): the loop's producer lingers longer
    # than request/response producers, and the setting reaches librdkafka.
    default = Settings.from_env(environ={}, service_name="loop-unit", topic_prefix="t.")
    tuned = Settings.from_env(environ={"LINEGUARD_KAFKA_LOOP_LINGER_MS": "60"}, service_name="loop-unit",
                              topic_prefix="t.")
    broker = FakeBroker()
    lingers = []
    for settings in (default, tuned):
        loop = ConsumerLoop(settings, "g", [RAW], to_observation, serde=serde, consumer=broker.consumer("g"))
        lingers.append(loop.producer._conf["linger.ms"])
        loop.producer.close(0)
    assert lingers == [25, 60]
    other = Producer(default, serde)
    assert other._conf["linger.ms"] == 5  # request/response producers keep librdkafka's default
    other.close(0)
