"""The data lake writer: layout, deterministic rotation, held offsets, and exactly once under crash and replay."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import boto3
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from lineguard.kafka import Record
from services.normalizer.lake import TABLES, LakeWriter, LocalStore, S3Store, encode_parquet

T0 = 1_764_400_000_000  # 2025-11-29T07:06:40Z
HOUR = 3_600_000


def obs_row(i: int, at: int, line: str = "line1") -> dict:
    return {"id": f"obs:r{i}", "line_id": line, "entity_id": "urn:ngsi-ld:Machine:line1-oven", "entity_type": "Machine",
            "sensor_id": "urn:ngsi-ld:Sensor:line1-oven-zone1_temperature", "attribute": "zone1_temperature",
            "value": 180.0 + i, "unit_code": "CEL", "observed_at": at, "quality": [], "raw_id": f"r{i}",
            "source": {"protocol": "mqtt", "device": "line1-oven", "address": "a", "position": str(i),
                       "received_by": None}}


def make_records(partition: int, count: int, start_at: int = T0, step_ms: int = 1000, topic: str = "raw.telemetry.v1",
                 first_offset: int = 0) -> list[Record]:
    return [Record(topic, partition, first_offset + i, b"d", {"i": i, "at": start_at + i * step_ms}, [], 0, None)
            for i in range(count)]


def row_source(record: Record, outputs=()) -> tuple[str, dict]:
    """Deterministic rows from records (the normalizer's outputs play this part in the service)."""
    value = record.value
    line = "line1" if value["i"] % 3 else "line2"
    return "observations", obs_row(record.partition * 1_000_000 + record.offset, value["at"], line)


def handled(records: list[Record]) -> list[tuple[Record, list]]:
    """Records as the loop hands them to a sink: each with its outputs (none needed here: see row_source)."""
    return [(record, []) for record in records]


def writer(store, **kw) -> LakeWriter:
    kw.setdefault("max_rows", 5)
    kw.setdefault("rotate_interval_ms", 10 * 60_000)
    return LakeWriter(store, row_source, **kw)


def lake_rows(root: Path) -> list[tuple[str, int, int]]:
    out = []
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path, columns=["raw_topic", "raw_partition", "raw_offset"])
        out += list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    return out


def test_objects_are_laid_out_by_table_line_date_hour_and_named_by_start_offset(tmp_path: Path) -> None:
    lake = writer(LocalStore(tmp_path), topic_prefix="plant1.", max_rows=100)
    lake.write(handled(make_records(2, 6)))
    assert lake.held_offsets() == {("raw.telemetry.v1", 2): 0}
    lake.flush()
    assert lake.held_offsets() == {}
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))
    assert names == [
        "observations/line_id=line1/date=2025-11-29/hour=07/plant1.raw.telemetry.v1+2+0000000000000000000.parquet",
        "observations/line_id=line2/date=2025-11-29/hour=07/plant1.raw.telemetry.v1+2+0000000000000000000.parquet",
    ]
    assert not list(tmp_path.rglob("*.tmp")), "temporary files are renamed away"
    dataset = ds.dataset(tmp_path / "observations", format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 6
    assert set(table.column("line_id").to_pylist()) == {"line1", "line2"}
    assert str(table.schema.field("observed_at").type) == "timestamp[ms, tz=UTC]"
    assert sorted(table.column("raw_offset").to_pylist()) == list(range(6))
    # lineage names the topic as the broker does, prefix included: the same name as in the object key
    assert set(table.column("raw_topic").to_pylist()) == {"plant1.raw.telemetry.v1"}


def test_rows_cross_into_the_next_hour_directory(tmp_path: Path) -> None:
    lake = writer(LocalStore(tmp_path), max_rows=100, rotate_interval_ms=2 * HOUR)
    start = T0 - (T0 % HOUR) + HOUR - 2000  # two seconds before 08:00
    lake.write(handled(make_records(0, 4, start_at=start, step_ms=1000)))
    lake.flush()
    hours = sorted({p.parent.name for p in tmp_path.rglob("*.parquet")})
    assert hours == ["hour=07", "hour=08"]


def test_rotation_by_record_count(tmp_path: Path) -> None:
    lake = writer(LocalStore(tmp_path), max_rows=5)
    lake.write(handled(make_records(0, 12)))
    starts = sorted({p.name.split("+")[2][:19] for p in tmp_path.rglob("*.parquet")})
    assert starts == ["0000000000000000000", "0000000000000000005"]
    assert lake.held_offsets() == {("raw.telemetry.v1", 0): 10}, "the open segment holds its start offset"


def test_rotation_by_record_time_not_wall_clock(tmp_path: Path) -> None:
    lake = writer(LocalStore(tmp_path), max_rows=1000, rotate_interval_ms=60_000)
    lake.write(handled(make_records(0, 10, step_ms=20_000)))  # records 0..2 within a minute of record 0, 3.. next
    starts = sorted({int(p.name.split("+")[2][:19]) for p in tmp_path.rglob("*.parquet")})
    assert starts == [0, 3, 6]
    assert lake.held_offsets() == {("raw.telemetry.v1", 0): 9}


def test_same_records_in_any_batching_give_byte_identical_objects(tmp_path: Path) -> None:
    records = make_records(0, 23, step_ms=7000) + make_records(1, 17, step_ms=13000)
    records.sort(key=lambda r: (r.offset, r.partition))
    results = []
    for name, sizes in (("one", [len(records)]), ("small", [1, 2, 3, 5, 8, 13, 8]), ("uneven", [7, 33])):
        root = tmp_path / name
        lake = writer(LocalStore(root), max_rows=4, rotate_interval_ms=60_000)
        pos = 0
        for size in sizes:
            lake.write(handled(records[pos:pos + size]))
            pos += size
        held = lake.held_offsets()
        results.append(({p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.parquet")}, held))
    assert results[0] == results[1] == results[2]


def test_a_rewound_batch_is_not_buffered_twice(tmp_path: Path) -> None:
    lake = writer(LocalStore(tmp_path), max_rows=100)
    batch = make_records(0, 5)
    lake.write(handled(batch))
    lake.write(handled(batch))  # the loop rewound: same offsets again
    lake.flush()
    assert sorted(o for _, _, o in lake_rows(tmp_path)) == [0, 1, 2, 3, 4]


class FlakyStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fail_next = 0

    def put(self, key: str, data: bytes) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("disk full")
        super().put(key, data)


def test_a_failed_write_keeps_the_segment_held_and_the_retry_writes_it(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path)
    lake = writer(store, max_rows=3)
    store.fail_next = 1
    with pytest.raises(OSError):
        lake.write(handled(make_records(0, 3)))
    assert lake.held_offsets() == {("raw.telemetry.v1", 0): 0}, "nothing may be committed"
    lake.write(handled(make_records(0, 6)))  # the loop retries the batch, then more arrives
    assert lake.held_offsets() == {}
    assert sorted(o for _, _, o in lake_rows(tmp_path)) == list(range(6))


class GatedStore(LocalStore):
    """Puts wait for the gate, and the first `fail` of them raise (a slow, then failing, S3)."""

    def __init__(self, root: Path, fail: int = 0) -> None:
        super().__init__(root, fsync=False)
        self.gate = threading.Event()
        self.fail = fail

    def put(self, key: str, data: bytes) -> None:
        self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise OSError("503 Slow Down")
        super().put(key, data)


def test_background_writes_hold_offsets_until_durable_and_retry_failures(tmp_path: Path) -> None:
    store = GatedStore(tmp_path, fail=1)
    lake = writer(store, max_rows=3, background=True)
    lake.write(handled(make_records(0, 7)))  # segments [0,3) and [3,6) go to the writer thread, [6,7) stays open
    assert lake.held_offsets() == {("raw.telemetry.v1", 0): 0}, "nothing is durable yet"
    assert lake.buffered_rows() == 7
    store.gate.set()  # the store answers: first with an error (retried after 0.5 s), then it works
    deadline = time.monotonic() + 10
    while lake.held_offsets() != {("raw.telemetry.v1", 0): 6}:
        assert time.monotonic() < deadline, lake.held_offsets()
        time.sleep(0.05)
    lake.flush()
    assert lake.held_offsets() == {}
    assert sorted(o for _, _, o in lake_rows(tmp_path)) == list(range(7))


class KillableStore(LocalStore):
    """A store whose process can be SIGKILLed: afterwards its writer thread's pending writes never happen."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.dead = False

    def put(self, key: str, data: bytes) -> None:
        if not self.dead:
            super().put(key, data)


def crash_and_replay(root: Path, records: dict[int, list[Record]], seed: int, crashes: int,
                     revokes: int = 0, rewinds: int = 0, background: bool = False) -> None:
    """Simulate the consumer loop against the lake writer: random batches, lagging auto-commits, SIGKILL at
    random points (buffers and uncommitted offsets lost), revocations (flush, then a commit that may be lost,
    then the partitions go to this or another instance), and rewound batches (outputs not acknowledged)."""
    rng = random.Random(seed)
    topic = "raw.telemetry.v1"
    committed = dict.fromkeys(records, 0)
    lake = writer(KillableStore(root), max_rows=4, rotate_interval_ms=45_000, background=background)
    position = dict(committed)
    stored = dict(committed)
    while any(position[p] < len(records[p]) for p in records):
        batch: list[Record] = []
        batch_start = dict(position)
        for p in records:
            n = rng.randint(0, 5)
            batch += records[p][position[p]:position[p] + n]
            position[p] = min(len(records[p]), position[p] + n)
        lake.write(handled(batch))
        if rewinds and rng.random() < 0.1:  # a delivery failed: seek back, store nothing, process again
            rewinds -= 1
            position = batch_start
            continue
        held = lake.held_offsets()
        for p in records:  # the loop stores min(next offset, held offset)
            stored[p] = min(position[p], held.get((topic, p), position[p]))
        if rng.random() < 0.3:  # auto-commit runs now and then
            committed = dict(stored)
        if crashes and rng.random() < 0.1:  # SIGKILL: buffers and uncommitted offsets are lost
            crashes -= 1
            lake.store.dead = True  # type: ignore[attr-defined]
            lake = writer(KillableStore(root), max_rows=4, rotate_interval_ms=45_000, background=background)
            position = dict(committed)
            stored = dict(committed)
        elif revokes and rng.random() < 0.1:  # rebalance: flush, store positions, commit synchronously
            revokes -= 1
            lake.flush()
            if rng.random() < 0.5:
                committed = dict(position)  # else the commit is lost
            if rng.random() < 0.5:  # the partitions go to another instance
                lake = writer(KillableStore(root), max_rows=4, rotate_interval_ms=45_000, background=background)
            position = dict(committed)
            stored = dict(committed)
    lake.flush()


@pytest.mark.parametrize("seed", range(8))
def test_every_row_lands_exactly_once_despite_crashes_and_replays(tmp_path: Path, seed: int) -> None:
    records = {p: make_records(p, 60, step_ms=6000 + 1000 * p) for p in range(3)}
    crash_and_replay(tmp_path, records, seed, crashes=4)
    rows = lake_rows(tmp_path)
    expected = sorted(("raw.telemetry.v1", p, r.offset) for p in records for r in records[p])
    assert sorted(rows) == expected  # no loss, no duplicate


@pytest.mark.parametrize(("seed", "background"), [(seed, seed % 2 == 1) for seed in range(12)])
def test_exactly_once_survives_rebalances_with_lost_commits_and_rewinds(tmp_path: Path, seed: int,
                                                                        background: bool) -> None:
    records = {p: make_records(p, 80, step_ms=5000 + 1000 * p) for p in range(3)}
    crash_and_replay(tmp_path, records, seed, crashes=3, revokes=4, rewinds=3, background=background)
    rows = lake_rows(tmp_path)
    expected = sorted(("raw.telemetry.v1", p, r.offset) for p in records for r in records[p])
    assert sorted(rows) == expected  # no loss, no duplicate


def test_a_flushed_segment_is_skipped_by_the_next_owner_when_the_commit_was_lost(tmp_path: Path) -> None:
    first = writer(LocalStore(tmp_path), max_rows=4)
    first.write(handled(make_records(0, 10)))  # segments [0,4), [4,8) written, [8,10) open
    first.flush()  # revoked: [8,10) closed early; the commit of 10 is lost, so the group still has 4... or 8
    markers = sorted(p.name for p in (tmp_path / "_segments" / "raw.telemetry.v1+0").iterdir())
    assert markers == ["0000000000000000004-0000000000000000000", "0000000000000000008-0000000000000000004",
                       "0000000000000000010-0000000000000000008"]
    second = writer(LocalStore(tmp_path), max_rows=4)  # another instance replays from 5
    second.write(handled(make_records(0, 20)[5:]))
    second.flush()
    assert sorted(o for _, _, o in lake_rows(tmp_path)) == list(range(20))


def test_every_table_encodes_a_real_normalizer_row() -> None:
    from lineguard.plant import default_plant_path, load_plant
    from services.normalizer.mapping import Normalizer

    normalizer = Normalizer(load_plant(default_plant_path()))
    alarm = normalizer.alarm({"id": "a1", "device": "line1-oven", "alarm_type": "HIGH", "action": "raise",
                              "severity": "major", "message": None, "observed_at": T0, "received_at": T0,
                              "source": {"protocol": "mqtt", "device": "x", "address": "a", "position": None,
                                         "received_by": None}})
    inspection = normalizer.inspection({
        "id": "i1", "item_id": "7", "line_id": "line1", "station": "detector", "captured_at": T0, "inspected_at": T0,
        "verdict": "defective", "defects": [{"defect_class": "burnt", "confidence": 0.9, "box": [1, 2, 3, 4],
                                             "reason": None}],
        "image_uri": "file:///x.png", "model": {"provider": "local", "model_id": "m", "version": None},
        "latency_ms": None})
    state = normalizer.observation({"id": "s1", "device": "line1-cooling-conveyor", "metric": "state",
                                    "value": "running", "unit": None, "observed_at": T0, "received_at": T0,
                                    "source": {"protocol": "mqtt", "device": "x", "address": "a", "position": None,
                                               "received_by": None}, "attributes": {}})
    lineage = {"raw_topic": "t", "raw_partition": 0, "raw_offset": 1}
    for table, row in (("alarms", alarm), ("inspections", inspection), ("observations", state)):
        spec = TABLES[table]
        prepared = {**row, **lineage}
        if spec.prepare:
            spec.prepare(prepared)
        back = pq.read_table(pa_buffer(encode_parquet(spec, [prepared]))).to_pylist()[0]
        assert back["raw_id"] == row.get("raw_id", row.get("id"))
        assert "line_id" not in back, "line_id is the partition column, not a file column"
        if table == "observations":
            assert back["value"] is None and back["value_text"] == "running"
        if table == "inspections":
            assert back["defects"][0]["box"] == [1, 2, 3, 4] and back["upstream"][0].endswith("cooling-conveyor")


def pa_buffer(data: bytes):
    import pyarrow as pa

    return pa.BufferReader(data)


def test_s3_store_writes_the_same_keys_under_the_prefix() -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="lake")
        lake = writer(S3Store("s3://lake/plant1/", client=client), max_rows=100)
        lake.write(handled(make_records(0, 3)))
        lake.flush()
        everything = sorted(o["Key"] for o in client.list_objects_v2(Bucket="lake")["Contents"])
        keys = [k for k in everything if k.endswith(".parquet")]
        assert set(everything) - set(keys) == {
            "plant1/_segments/raw.telemetry.v1+0/0000000000000000003-0000000000000000000"}
        assert keys == [
            "plant1/observations/line_id=line1/date=2025-11-29/hour=07/raw.telemetry.v1+0+0000000000000000000.parquet",
            "plant1/observations/line_id=line2/date=2025-11-29/hour=07/raw.telemetry.v1+0+0000000000000000000.parquet",
        ]
        body = client.get_object(Bucket="lake", Key=keys[0])["Body"].read()
        assert pq.read_table(pa_buffer(body)).num_rows == 2
