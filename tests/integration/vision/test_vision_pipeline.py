"""The simulator's camera -> the vision service (a real process) -> raw.inspections.v1 on a real Tansu broker.

Every emitted item must come back as exactly one inspection, and the verdicts must match the simulator's ground
truth at the budget: precision and recall >= 0.95 for each defect class and for good.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer

from lineguard.avro import AvroSerde
from lineguard.embedded import free_port
from lineguard.settings import Settings
from simulator.camera import DEFECT_CLASSES, CameraConditions, CameraEmitter, random_defects

ROOT = Path(__file__).resolve().parents[3]
ITEMS = 120
CAMERA_TOKEN = "pipeline-camera-token"

pytestmark = pytest.mark.integration


def start_service(settings: Settings, tmp_path: Path) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix, "LINEGUARD_HTTP_PORT": str(port),
           "LINEGUARD_HTTP_HOST": "127.0.0.1", "LINEGUARD_VISION_IMAGE_DIR": str(tmp_path / "images"),
           "LINEGUARD_VISION_IMAGE_SIZE": "256x256", "LINEGUARD_VISION_TOKENS": f"other-camera,{CAMERA_TOKEN}"}
    log_path = tmp_path / "vision.log"
    proc = subprocess.Popen([sys.executable, "-m", "services.vision"], cwd=ROOT, env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vision exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return proc, port, log_path
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"vision not ready: {log_path.read_text()[-2000:]}")


async def emit_items(port: int, conditions: CameraConditions, seed: int) -> dict[str, frozenset[str]]:
    rng = np.random.default_rng(seed)
    emitter = CameraEmitter(f"http://127.0.0.1:{port}/v1/images", rng=np.random.default_rng(seed + 1),
                            conditions=conditions, token=CAMERA_TOKEN)
    truth: dict[str, frozenset[str]] = {}
    start = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    limit = asyncio.Semaphore(4)

    async def one(index: int, defects: frozenset[str]) -> None:
        async with limit:
            await emitter.emit("line1", "line1-detector", f"{conditions.name}-{index:04d}",
                               start + timedelta(seconds=index), defects)

    items = [random_defects(rng, 0.6) for _ in range(ITEMS)]
    for index, defects in enumerate(items):
        truth[f"{conditions.name}-{index:04d}"] = defects
    try:
        await asyncio.gather(*(one(i, d) for i, d in enumerate(items)))
    finally:
        await emitter.close()
    # the emitter's own record of the truth (boxes included) agrees with what we asked for
    assert {k: frozenset(b["class"] for b in v) for k, v in emitter.ground_truth.items()} == truth
    return truth


def consume(settings: Settings, count: int, timeout: float = 60.0) -> list[dict]:
    serde = AvroSerde(topic_prefix=settings.topic_prefix)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"check-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    consumer.subscribe([settings.topic_prefix + "raw.inspections.v1"])
    records: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < count and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                if message.error() is None:
                    value = serde.decode("raw.inspections.v1", message.value())
                    assert message.key() == value["line_id"].encode()
                    records.append(value)
        # anything beyond `count` would be a duplicate: give it a moment to show up
        for message in consumer.consume(500, timeout=2.0):
            if message.error() is None:
                records.append(serde.decode("raw.inspections.v1", message.value()))
    finally:
        consumer.close()
    return records


def assert_at_budget(truth: dict[str, frozenset[str]], records: list[dict]) -> None:
    by_item = {r["item_id"]: r for r in records}
    assert len(records) == len(truth) and set(by_item) == set(truth), "one inspection per item, no more, no less"
    for label in (*DEFECT_CLASSES, "good"):
        def has(classes: frozenset[str], label: str = label) -> bool:
            return (not classes) if label == "good" else label in classes

        predicted = {i: frozenset(d["defect_class"] for d in by_item[i]["defects"]) for i in truth}
        tp = sum(has(truth[i]) and has(predicted[i]) for i in truth)
        fp = sum(has(predicted[i]) and not has(truth[i]) for i in truth)
        fn = sum(has(truth[i]) and not has(predicted[i]) for i in truth)
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        assert precision >= 0.95 and recall >= 0.95, f"{label}: precision {precision:.3f}, recall {recall:.3f}"
    for record in records:
        assert record["verdict"] == ("defective" if record["defects"] else "ok")
        assert record["image_uri"].startswith("file://") and record["model"]["provider"] == "local"


@pytest.mark.timeout(240)
def test_camera_through_the_service_to_raw_inspections(make_settings: Callable[..., Settings],
                                                       create_topics: Callable[[Settings], None],
                                                       tmp_path: Path) -> None:
    settings = make_settings()
    create_topics(settings)
    proc, port, log_path = start_service(settings, tmp_path)
    try:
        truth = asyncio.run(emit_items(port, CameraConditions.standard(), seed=2024))
        truth |= asyncio.run(emit_items(port, CameraConditions.harsh(), seed=2025))
        records = consume(settings, len(truth))
    finally:
        proc.terminate()
        code = proc.wait(timeout=20)
    assert code == 0, log_path.read_text()[-2000:]
    assert_at_budget(truth, records)
    # the images are in the object store, named by line, date, station and item
    stored = sorted((tmp_path / "images").rglob("*.png"))
    assert len(stored) == len(truth)
    assert all("line_id=line1" in str(p) and "date=2026-11-29" in str(p) for p in stored)


@pytest.mark.timeout(120)
def test_an_abstention_reaches_raw_inspections_as_not_judged(make_settings: Callable[..., Settings],
                                                             create_topics: Callable[[Settings], None],
                                                             tmp_path: Path) -> None:
    import base64
    import json

    from lineguard.kafka.clients import read_topic
    from lineguard.topics import RAW_INSPECTIONS
    from simulator.camera import render_unusual

    settings = make_settings()
    create_topics(settings)
    proc, port, log_path = start_service(settings, tmp_path)
    answers = []
    try:
        for item_id, kind in (("blank-1", "blank_belt"), ("zoom-1", "zoomed")):
            png = render_unusual(kind, np.random.default_rng(11))
            body = json.dumps({"line_id": "line1", "station": "line1-detector", "item_id": item_id,
                               "captured_at": "2026-11-29T12:00:00Z",
                               "image_base64": base64.b64encode(png).decode()}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/images", data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {CAMERA_TOKEN}"})
            with urllib.request.urlopen(request, timeout=30) as response:  # 200 only after the broker's ack
                answers.append(json.loads(response.read()))
        records = [r.value for r in read_topic(settings, RAW_INSPECTIONS, timeout_s=60)]
    finally:
        proc.terminate()
        code = proc.wait(timeout=20)
    assert code == 0, log_path.read_text()[-2000:]
    assert [a["verdict"] for a in answers] == ["abstained", "abstained"]
    by_item = {r["item_id"]: r for r in records}
    assert set(by_item) == {"blank-1", "zoom-1"}, "each abstention published once"
    for answer in answers:
        record = by_item[answer["item_id"]]
        assert record["verdict"] == "abstained" and record["defects"] == []
        assert record["abstention"] == answer["abstention"] and record["abstention"]["reason"]
        assert record["id"] == answer["id"] and record["image_uri"].startswith("file://")
