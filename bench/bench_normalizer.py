"""Benchmark: the normalizer (raw -> unified topics + Parquet lake) against a bare confluent-kafka
consume-produce loop on the same records, in the same run, on the same broker (Tansu, started here).

    .venv/bin/python bench/bench_normalizer.py [--records 60000]

Prints the rates, their ratios and the lake writer's own rate (budget: 100,000 rows/s). DESIGN's budget, at least
0.6 in every run, holds the normalizer against the bare loop that decodes each raw record and encodes one output
record with fastavro (the per-record work any Avro consumer has, written by hand with no runtime). For reference: a
bytes-only loop that decodes nothing (fastavro's decode and encode alone take several times its per-record time on
this machine), and the bare loop with Lineguard's own serde (its generated codec, `lineguard/avro_codec.py`), which
shows what the runtime, mapping and lake cost beside the same codec. Rates are measured from the first record
consumed to the last (the group join not counted).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer
from confluent_kafka import Producer as RdProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "normalizer"))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from loop_helpers import avro_roundtrip, run_until_consumed  # noqa: E402
from normalizer_records import make_raw_set  # noqa: E402

from lineguard.catalog import admin_client, bootstrap_topics, load_catalog, wait_for_broker  # noqa: E402
from lineguard.embedded import free_port, tansu_command  # noqa: E402
from lineguard.kafka import ConsumerLoop, Record, loop_producer_overrides, producer_config  # noqa: E402
from lineguard.logs import setup_logging  # noqa: E402
from lineguard.plant import default_plant_path, load_plant  # noqa: E402
from lineguard.service import tune_gc  # noqa: E402
from lineguard.settings import Settings  # noqa: E402
from services.normalizer.lake import LakeWriter, LocalStore  # noqa: E402
from services.normalizer.mapping import Normalizer  # noqa: E402
from services.normalizer.service import INPUT_TOPICS, Pipeline  # noqa: E402

BATCH = 1000


def start_broker() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(tansu_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    bootstrap = f"127.0.0.1:{port}"
    wait_for_broker(bootstrap, timeout=30)
    return proc, bootstrap


def load_input(settings: Settings, records: int) -> int:
    """Produce the raw records once; both loops read the same ones. Returns how many.

    Like ingest, the producer puts a W3C traceparent on every record, so the loop forwards that context instead of
    opening a new trace per output."""
    from lineguard.kafka import Producer

    plant = load_plant(default_plant_path())
    raw = make_raw_set(plant, readings=records, alarms=records // 100, inspections=records // 50, bad=0, step_ms=20)
    producer = Producer(settings)
    total = 0
    for topic, key, value in raw.messages():
        producer.produce(topic, key, value)
        total += 1
        if total % 10_000 == 0:
            producer.poll(0)
    assert producer.close(60) == 0, "the broker did not take the input"
    return total


def bare_loop(settings: Settings, expected: int, avro: str | None = None) -> float:
    """consume -> produce -> wait for delivery -> store offsets; returns records/s.

    With `avro=None` the same bytes go out (the bytes-only reference). With `avro="fastavro"` each record is
    decoded and one output encoded with fastavro by hand: what any Avro service must do, with no mapping, lake
    or runtime (the budget's baseline). `avro="lineguard"` does the same with Lineguard's serde (its generated
    codec), for reference: the runtime's cost beside the same codec."""
    from lineguard.avro import AvroSerde

    roundtrip = avro_roundtrip(AvroSerde(topic_prefix=settings.topic_prefix), avro) if avro else None
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"{avro or 'bare'}-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": True, "enable.auto.offset.store": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    # the same producer settings as the service's loop (its linger included), so only the work differs
    producer = RdProducer(producer_config(settings, **loop_producer_overrides(settings)))
    consumer.subscribe([settings.topic(t) for t in INPUT_TOPICS])
    prefix_len = len(settings.topic_prefix)
    out_topic = settings.topic("line.observations.v1")
    seen = 0
    started = None
    try:
        while seen < expected:
            messages = consumer.consume(BATCH, 0.2)
            if not messages:
                continue
            if started is None:
                started = time.perf_counter()
            for msg in messages:
                if msg.error() is None:
                    value = msg.value()
                    if roundtrip is not None:
                        value = roundtrip(msg.topic()[prefix_len:], value)
                    producer.produce(out_topic, value, msg.key())
                    seen += 1
            producer.flush(30)
            consumer.store_offsets(messages[-1])
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
    return expected / elapsed


def identity_loop(settings: Settings, expected: int) -> float:
    """The shared ConsumerLoop (it decodes) with a handler that re-encodes each record unchanged, no mapping, no
    lake: what the runtime itself costs, to tell it apart from the normalizer's own work; returns records/s."""
    from lineguard.kafka import Output

    first: list[float] = []
    loop = ConsumerLoop(settings, f"identity-{uuid.uuid4().hex[:6]}", INPUT_TOPICS, lambda r: None,
                        batch_size=BATCH)
    encode = loop.serde.encode

    def handle(record: Record) -> list[Output]:
        if not first:
            first.append(time.perf_counter())
        return [Output(record.topic + ".dlq", record.key, encode(record.topic, record.value))]

    loop.handler = handle
    ended = run_until_consumed(loop, expected)
    loop.producer.close(5)
    return expected / (ended - first[0])


def normalizer_loop(settings: Settings, expected: int, lake_dir: Path) -> tuple[float, LakeWriter]:
    """The real thing: ConsumerLoop + Pipeline + LakeWriter (local directory, fsync on); returns records/s."""
    normalizer = Normalizer(load_plant(default_plant_path()))
    pipeline = Pipeline(normalizer, settings.service_name)
    lake = LakeWriter(LocalStore(lake_dir), pipeline.lake_row, topic_prefix=settings.topic_prefix,
                      max_rows=100_000, rotate_interval_ms=600_000, service=settings.service_name, background=True)
    first: list[float] = []

    def handle(record: Record):
        if not first:
            first.append(time.perf_counter())
        return pipeline.handle(record)

    loop = ConsumerLoop(settings, f"normalizer-{uuid.uuid4().hex[:6]}", INPUT_TOPICS, handle, sink=lake,
                        batch_size=BATCH)
    ended = run_until_consumed(loop, expected)
    loop.producer.close(5)
    return expected / (ended - first[0]), lake


def lake_writer_rate(rows: int, lake_dir: Path) -> float:
    """Rows/s of the lake writer alone: buffer, encode Parquet, write (fsync) and rename."""
    plant = load_plant(default_plant_path())
    normalizer = Normalizer(plant)
    raw = make_raw_set(plant, readings=rows, alarms=0, inspections=0, bad=0, step_ms=5)
    outputs = [normalizer.observation(r) for r in raw.telemetry]
    records = [(Record("raw.telemetry.v1", i % 6, i // 6, None, None, [], 0, None), ()) for i in range(rows)]
    lake = LakeWriter(LocalStore(lake_dir), lambda r, _: ("observations", outputs[r.offset * 6 + r.partition]),
                      max_rows=50_000, rotate_interval_ms=3_600_000, service="bench", background=True)
    started = time.perf_counter()
    for i in range(0, rows, BATCH):
        lake.write(records[i:i + BATCH])
    lake.flush()
    elapsed = time.perf_counter() - started
    assert lake.rows_written == rows
    return rows / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=60_000, help="raw readings to feed (plus alarms, inspections)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each loop counts")
    parser.add_argument("--lake-rows", type=int, default=200_000, help="rows for the lake writer figure")
    args = parser.parse_args()
    setup_logging("bench", "WARNING")
    tune_gc()  # as the service does at start-up
    broker, bootstrap = start_broker()
    best: dict[str, float] = {}
    try:
        settings = Settings.from_env(environ={}, kafka_bootstrap=bootstrap, topic_prefix="bench.",
                                     service_name="normalizer", kafka_session_timeout_ms=6000)
        bootstrap_topics(admin_client(bootstrap), load_catalog(), settings.topic_prefix)
        total = load_input(settings, args.records)
        print(f"input: {total} raw records on {len(INPUT_TOPICS)} topics (broker {bootstrap}); "
              f"{args.rounds} interleaved rounds, best of each")
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(args.rounds):
                rates = {
                    "bare": bare_loop(settings, total),
                    "bare_avro": bare_loop(settings, total, avro="fastavro"),
                    "bare_codec": bare_loop(settings, total, avro="lineguard"),
                    "identity": identity_loop(settings, total),
                }
                rate, lake = normalizer_loop(settings, total, Path(tmp) / f"lake{round_}")
                rates["normalizer"] = rate
                print(f"  round {round_ + 1}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()) +
                      f" ({lake.objects_written} lake objects, {lake.bytes_written:,} bytes)")
                for k, v in rates.items():
                    best[k] = max(best.get(k, 0.0), v)
            writer = max(lake_writer_rate(args.lake_rows, Path(tmp) / f"lake-only{i}") for i in range(args.rounds))
    finally:
        broker.terminate()
        broker.wait(10)
    ratio = best["normalizer"] / best["bare_avro"]
    print(f"bare confluent-kafka consume-produce loop (bytes in, bytes out): {best['bare']:10,.0f} records/s")
    print(f"bare loop + Avro decode and encode per record (fastavro):       {best['bare_avro']:10,.0f} records/s")
    print(f"bare loop + the same with Lineguard's serde (generated codec):   {best['bare_codec']:10,.0f} records/s")
    print(f"shared ConsumerLoop, identity handler (runtime cost):            {best['identity']:10,.0f} records/s")
    print(f"normalizer (loop + decode, map, encode, produce, Parquet lake):  {best['normalizer']:10,.0f} records/s")
    print(f"ratio normalizer / bare Avro loop: {ratio:.2f} (budget >= 0.6: {'ok' if ratio >= 0.6 else 'MISSED'})")
    print(f"ratio normalizer / bare loop with Lineguard's serde: {best['normalizer'] / best['bare_codec']:.2f} (reference)")
    print(f"ratio normalizer / identity ConsumerLoop: {best['normalizer'] / best['identity']:.2f}; "
          f"normalizer / bytes-only loop: {best['normalizer'] / best['bare']:.2f} (reference)")
    print(f"lake writer (buffer, Parquet, fsync, rename): {writer:10,.0f} rows/s "
          f"(budget >= 100,000: {'ok' if writer >= 100_000 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
