"""Exactly-once lake under faults: SIGKILL the normalizer at random points, restart it, and find every input row
in the lake exactly once (no loss, no duplicate) by reading the Parquet objects back. Once against a local
directory, once against an S3 API (moto server)."""

from __future__ import annotations

import io
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer
from normalizer_process import NormalizerProcess as Normalizer
from normalizer_process import normalizer_env
from normalizer_records import T0, RawSet, make_raw_set

from lineguard.kafka import Producer, dlq_headers
from lineguard.plant import default_plant_path, load_plant
from lineguard.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
KILLS = 3


@pytest.fixture(scope="module")
def raw_set() -> RawSet:
    return make_raw_set(load_plant(default_plant_path()), readings=6000, alarms=60, inspections=200, bad=8,
                        step_ms=250)


def produce_all(settings: Settings, raw: RawSet) -> None:
    producer = Producer(settings)
    for topic, key, value in raw.messages():
        producer.produce(topic, key, value)
    assert producer.close(30) == 0


def run_with_kills(env: dict[str, str], tmp_path: Path, seed: int,
                   while_running: Callable[[Normalizer], None] | None = None) -> Normalizer:
    """Start, SIGKILL at a random moment, restart... then let the last run catch up and stop it with SIGTERM."""
    rng = random.Random(seed)
    normalizer = Normalizer(env, tmp_path / "normalizer.log")
    for _ in range(KILLS):
        normalizer.start()
        normalizer.wait_ready()
        time.sleep(rng.uniform(0.2, 2.0))
        normalizer.kill()
    normalizer.start()
    normalizer.wait_ready()
    ready_at = time.monotonic()
    last, stable_since = -1.0, time.monotonic()
    while True:  # caught up = nothing new handled for 4 s (after it handled something, or after 10 s)
        count = normalizer.records_in()
        now = time.monotonic()
        if count != last:
            last, stable_since = count, now
        elif now - stable_since > 4 and (count > 0 or now - ready_at > 10):
            break
        assert now - ready_at < 60, f"normalizer did not catch up:\n{normalizer.tail()}"
        time.sleep(0.25)
    if while_running is not None:
        while_running(normalizer)
    assert normalizer.stop() == 0, normalizer.tail()
    return normalizer


def check_lake(tables: dict[str, list], raw: RawSet) -> None:
    for table, expected in (("observations", raw.telemetry), ("alarms", raw.alarms),
                            ("inspections", raw.inspections)):
        ids = Counter(tables.get(table, []))
        duplicates = {k: n for k, n in ids.items() if n > 1}
        missing = {r["id"] for r in expected} - set(ids)
        unexpected = set(ids) - {r["id"] for r in expected}
        assert not duplicates, f"{table}: {len(duplicates)} rows written twice, e.g. {list(duplicates)[:5]}"
        assert not missing, f"{table}: {len(missing)} rows lost, e.g. {sorted(missing)[:5]}"
        assert not unexpected, f"{table}: rows that should have been dead-lettered: {sorted(unexpected)[:5]}"


def table_of(key: str) -> str:
    return key.split("/", 1)[0]


def read_local_lake(root: Path) -> dict[str, list]:
    tables: dict[str, list] = {}
    for path in root.rglob("*.parquet"):
        key = path.relative_to(root).as_posix()
        assert re.fullmatch(r"\w+/line_id=line1/date=\d{4}-\d\d-\d\d/hour=\d\d/t\w+\.raw\.\w+\.v1\+\d+\+\d{19}\.parquet",
                            key), key
        tables.setdefault(table_of(key), []).extend(pq.read_table(path, columns=["raw_id"]).column(0).to_pylist())
    return tables


def consume_until(settings: Settings, topic: str, done: Callable[[list], bool], timeout: float = 30.0) -> list:
    """Read `topic` from the beginning until `done(messages so far)` (or the timeout)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"check-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    consumer.subscribe([settings.topic(topic)])
    messages: list = []
    deadline = time.monotonic() + timeout
    try:
        while not done(messages) and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(1000, 0.5) if m.error() is None]
    finally:
        consumer.close()
    return messages


def test_local_lake_has_every_row_exactly_once_after_sigkills(make_settings: Callable[..., Settings],
                                                             create_topics: Callable[[Settings], None],
                                                             raw_set: RawSet, tmp_path: Path) -> None:
    settings = make_settings()
    create_topics(settings)
    produce_all(settings, raw_set)
    lake = tmp_path / "lake"
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")

    late = dict(raw_set.telemetry[0], id="late-oven", device="line1-oven", metric="zone1_temperature", value=365.0,
                unit="degF", observed_at=T0 + 10**8, received_at=T0 + 10**8)

    def asset_graph_answers(normalizer: Normalizer) -> None:
        status, body = normalizer.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Machine:line1-detector/upstream")
        assert status == 200
        upstream = json.loads(body)["entities"]
        assert {"urn:ngsi-ld:Machine:line1-oven", "urn:ngsi-ld:Machine:line1-mixer"} <= {e["id"] for e in upstream}
        producer = Producer(settings)  # a live reading reaches the API as the oven's latest value
        producer.produce("raw.telemetry.v1", "line1-oven", late)
        assert producer.close(10) == 0
        deadline = time.monotonic() + 15
        while True:
            oven = json.loads(normalizer.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Machine:line1-oven")[1])
            if oven.get("zone1_temperature", {}).get("observedAt") == "2025-11-30T10:53:20.000Z":
                break
            assert time.monotonic() < deadline, f"latest value never seen: {oven.get('zone1_temperature')}"
            time.sleep(0.2)
        assert oven["zone1_temperature"]["value"] == pytest.approx(185.0)
        assert oven["zone1_temperature"]["unitCode"] == "CEL"
        assert normalizer.get("/livez")[0] == 200

    run_with_kills(normalizer_env(settings, LINEGUARD_LAKE_DIR=str(lake), LINEGUARD_GROUP_ID="normalizer-local"),
                   tmp_path, seed, asset_graph_answers)
    check_lake(read_local_lake(lake), RawSet(telemetry=[*raw_set.telemetry, late], alarms=raw_set.alarms,
                                             inspections=raw_set.inspections))
    # the unified topics got every valid record (at least once), the bad ones went to the DLQ with the reason
    serde = Producer(settings).serde
    valid = {r["id"] for r in raw_set.telemetry} | {"late-oven"}
    bad = {r["id"] for r in raw_set.bad_telemetry}

    def raw_ids(messages: list) -> set[str]:
        return {serde.decode("line.observations.v1", m.value())["raw_id"] for m in messages}

    observations = consume_until(settings, "line.observations.v1", lambda ms: len(ms) >= len(valid) and
                                 raw_ids(ms) >= valid)
    assert raw_ids(observations) == valid
    assert all(m.key() == b"line1" for m in observations)
    dead = consume_until(settings, "raw.telemetry.v1.dlq", lambda ms: {
        serde.decode("raw.telemetry.v1", m.value())["id"] for m in ms} >= bad, timeout=15)
    assert {serde.decode("raw.telemetry.v1", m.value())["id"] for m in dead} == bad
    assert "unknown device 'ghost-device'" in dlq_headers(dead[0].headers())["__connect.errors.exception.message"]


def test_s3_lake_has_every_row_exactly_once_after_sigkills(make_settings: Callable[..., Settings],
                                                          create_topics: Callable[[Settings], None],
                                                          raw_set: RawSet, tmp_path: Path, moto_endpoint: str) -> None:
    settings = make_settings()
    create_topics(settings)
    produce_all(settings, raw_set)
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="lake")
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    run_with_kills(normalizer_env(settings, LINEGUARD_LAKE_URL="s3://lake/lineguard",
                                  LINEGUARD_LAKE_ENDPOINT_URL=moto_endpoint, LINEGUARD_GROUP_ID="normalizer-s3",
                                  **aws), tmp_path, seed)
    tables: dict[str, list] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix="lineguard/"):
        for obj in page.get("Contents", []):
            key = obj["Key"][len("lineguard/"):]
            if key.startswith("_segments/"):
                continue  # segment markers (see LakeWriter._load_closed)
            assert key.endswith(".parquet"), key
            body = s3.get_object(Bucket="lake", Key=obj["Key"])["Body"].read()
            ids = pq.read_table(io.BytesIO(body), columns=["raw_id"]).column(0).to_pylist()
            tables.setdefault(table_of(key), []).extend(ids)
    check_lake(tables, raw_set)
    assert sorted(tables) == ["alarms", "inspections", "observations"]


def test_alarm_state_survives_a_restart(make_settings: Callable[..., Settings],
                                        create_topics: Callable[[Settings], None], tmp_path: Path) -> None:
    """Raised before a restart, raised again and cleared after it: one alarm, raise_count 2, the full duration."""
    settings = make_settings()
    create_topics(settings)
    env = normalizer_env(settings, LINEGUARD_LAKE_ENABLED="false", LINEGUARD_GROUP_ID="normalizer-alarms")
    source = {"protocol": "mqtt", "device": "line1-oven", "address": "plant/oven/alarms", "position": None,
              "received_by": None}

    def raw_alarm(rid: str, action: str, at: int) -> dict:
        return {"id": rid, "device": "line1-oven", "alarm_type": "OVEN_ZONE1_HIGH", "action": action,
                "severity": "major", "message": None, "observed_at": at, "received_at": at, "source": source}

    def feed(*alarms: dict) -> None:
        producer = Producer(settings)
        for value in alarms:
            producer.produce("raw.alarms.v1", "line1-oven", value)
        assert producer.close(10) == 0

    def run_until(normalizer: Normalizer, handled: int) -> None:
        normalizer.start()
        normalizer.wait_ready()
        deadline = time.monotonic() + 30
        while normalizer.records_in() < handled:
            assert time.monotonic() < deadline, normalizer.tail()
            time.sleep(0.2)
        assert normalizer.stop() == 0, normalizer.tail()

    normalizer = Normalizer(env, tmp_path / "normalizer.log")
    feed(raw_alarm("x1", "raise", T0))
    run_until(normalizer, 1)
    feed(raw_alarm("x2", "raise", T0 + 30_000), raw_alarm("x3", "clear", T0 + 90_000))
    run_until(normalizer, 2)
    assert '"event":"alarm_state_restored","records":1,"active":1' in normalizer.tail()
    serde = Producer(settings).serde

    def states(messages: list) -> dict[str, dict]:
        return {out["raw_id"]: out for out in (serde.decode("line.alarms.v1", m.value()) for m in messages)}

    published = states(consume_until(settings, "line.alarms.v1", lambda ms: {"x1", "x2", "x3"} <= set(states(ms))))
    assert published["x2"]["raise_count"] == 2 and published["x2"]["raised_at"] == T0
    cleared = published["x3"]
    assert cleared["state"] == "cleared" and cleared["raise_count"] == 2
    assert cleared["raised_at"] == T0 and cleared["duration_ms"] == 90_000
    assert len({out["alarm_id"] for out in published.values()}) == 1
