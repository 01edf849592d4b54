"""The lake is queryable as is: DuckDB with Hive partitioning runs the README's queries on what the writer wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineguard.kafka import Record
from lineguard.plant import default_plant_path, load_plant
from services.normalizer.lake import LakeWriter, LocalStore
from services.normalizer.mapping import Normalizer

duckdb = pytest.importorskip("duckdb")

T0 = 1_764_399_600_000  # 2025-11-29T07:00:00Z


def test_duckdb_reads_the_lake_with_its_partitions(tmp_path: Path) -> None:
    normalizer = Normalizer(load_plant(default_plant_path()))
    rows: dict[int, tuple[str, dict]] = {}
    records = []
    for i in range(240):  # zone 1 readings every 30 s over two hours, in Fahrenheit
        raw = {"id": f"r{i}", "device": "line1-oven", "metric": "zone1_temperature", "value": 356.0 + (i % 2) * 18,
               "unit": "degF", "observed_at": T0 + i * 30_000, "received_at": T0 + i * 30_000,
               "source": {"protocol": "sparkplug", "device": "line1-oven", "address": "x", "position": None,
                          "received_by": None}, "attributes": {}}
        rows[i] = ("observations", normalizer.observation(raw))
        records.append(Record("raw.telemetry.v1", 0, i, None, raw, [], 0, None))
    for i in range(10):
        inspection = {"id": f"i{i}", "item_id": str(i), "line_id": "line1", "station": "detector",
                      "captured_at": T0 + i * 1000, "inspected_at": T0 + i * 1000,
                      "verdict": "defective" if i < 3 else "ok", "defects": [], "image_uri": "file:///x",
                      "model": {"provider": "local", "model_id": "m", "version": None}, "latency_ms": None}
        rows[1000 + i] = ("inspections", normalizer.inspection(inspection))
        records.append(Record("raw.inspections.v1", 0, 1000 + i, None, inspection, [], 0, None))
    lake = LakeWriter(LocalStore(tmp_path), lambda r, _: rows[r.offset], max_rows=100, rotate_interval_ms=3_600_000)
    lake.write([(record, []) for record in records])
    lake.flush()
    db = duckdb.connect()
    minutes = db.execute(f"""
        SELECT date_trunc('minute', observed_at) AS minute, avg(value) AS mean_cel, count(*) AS readings
        FROM read_parquet('{tmp_path}/observations/*/*/*/*.parquet', hive_partitioning = true)
        WHERE line_id = 'line1' AND date = DATE '2025-11-29' AND attribute = 'zone1_temperature'
        GROUP BY minute ORDER BY minute""").fetchall()
    assert len(minutes) == 120
    assert all(n == 2 and mean == pytest.approx(185.0) for _, mean, n in minutes)
    hours = db.execute(f"""
        SELECT hour, count(*) FROM read_parquet('{tmp_path}/observations/*/*/*/*.parquet', hive_partitioning = true)
        GROUP BY hour ORDER BY hour""").fetchall()
    assert [(int(h), n) for h, n in hours] == [(7, 120), (8, 120)]
    rate = db.execute(f"""
        SELECT avg(CASE WHEN verdict = 'defective' THEN 1 ELSE 0 END)
        FROM read_parquet('{tmp_path}/inspections/*/*/*/*.parquet', hive_partitioning = true)""").fetchone()[0]
    assert rate == pytest.approx(0.3)
