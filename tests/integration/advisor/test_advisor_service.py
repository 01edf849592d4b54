"""The advisor against a real Tansu broker: windows from the three line topics to recommendations.v1, chat,
and recovery after SIGKILL in the middle of a window (same recommendations, never a duplicate id)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from scenario_driver import RUN_START_MS, run_scenario

from lineguard.avro import AvroSerde
from lineguard.embedded import free_port
from lineguard.kafka import Producer
from lineguard.plant import default_plant_path, load_plant
from services.advisor.engine import LineState, WindowEngine
from services.advisor.models import ModelAlias, create_provider
from services.advisor.recommend import Advisor
from services.advisor.retrieval import Retriever
from services.advisor.settings import DOCS_DIR
from services.advisor.window import LineHistory, LineWindow

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
PLANT = load_plant(default_plant_path())
TOPIC_BY_KIND = {"observations": "line.observations.v1", "alarms": "line.alarms.v1",
                 "inspections": "line.inspections.v1"}


def scenario_records(name: str, until_s: float) -> list:
    _, records = run_scenario(PLANT, name, duration_s=until_s)
    return list(records)


def produce(settings, records) -> None:
    producer = Producer(settings)
    for record in records:
        producer.produce(TOPIC_BY_KIND[record.kind], record.value["line_id"], record.value)
    assert producer.flush(30) == 0
    producer.close()


def read_recommendations(settings, expect: int, timeout: float = 60.0) -> list[dict]:
    serde = AvroSerde()
    full = settings.topic("recommendations.v1")
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.assign([TopicPartition(full, p, 0) for p in range(3)])
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < expect:
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None:
                    out.append(serde.decode("recommendations.v1", msg.value()))
        # and a little longer, to see duplicates that would arrive late
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            for msg in consumer.consume(100, 0.3):
                if msg.error() is None:
                    out.append(serde.decode("recommendations.v1", msg.value()))
    finally:
        consumer.close()
    return out


def expected_recommendations(records) -> dict[str, dict]:
    """The uninterrupted reference, computed in process with the same engine and advisor."""
    engine = WindowEngine()
    state = LineState("line1")
    advisor = Advisor(PLANT, Retriever.from_folder(DOCS_DIR), create_provider(ModelAlias("a", "analysis", "x")))
    out = {}
    for record in records:
        for due in engine.add_and_advance(state, record.kind, record.value):
            outcome = asyncio.run(advisor.recommend(LineWindow.from_dict(due.window),
                                                    LineHistory.from_dict(due.history), due.trigger,
                                                    rec_id=due.id, now_ms=0))
            out[due.id] = outcome.record
    return out


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "created_at"}


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def advisor_process(make_settings, create_topics, tmp_path) -> Iterator:
    settings = make_settings()
    create_topics(settings)
    procs: list[subprocess.Popen] = []

    def start(port: int) -> subprocess.Popen:
        env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
               "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix, "LINEGUARD_HTTP_PORT": str(port),
               "LINEGUARD_HTTP_HOST": "127.0.0.1", "LINEGUARD_MODEL_ALIAS": "analysis-only",
               "LINEGUARD_CHECKPOINT_INTERVAL_S": "0.5", "LINEGUARD_LOG_LEVEL": "WARNING",
               "LINEGUARD_GROUP_ID": "advisor-test", "LINEGUARD_CHAT_TOKENS": "t0ken"}
        with open(tmp_path / f"advisor-{port}.log", "w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "services.advisor"], cwd=ROOT, env=env,
                                    stdout=log_file, stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200,
                   40, "the advisor to be ready")
        return proc

    yield settings, start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_advisor_recovers_after_sigkill_mid_window_with_the_same_recommendations(advisor_process) -> None:
    settings, start = advisor_process
    records = scenario_records("oven_zone_overheat", until_s=760)
    cut = next(i for i, r in enumerate(records) if r.at_ms >= RUN_START_MS + 450_000)  # mid window 300-600
    first, rest = records[:cut], records[cut:]
    expected = expected_recommendations(records)
    assert len(expected) >= 3  # windows 0 and 300 scheduled, a defect spike in window 600

    port = free_port()
    proc = start(port)
    produce(settings, first)
    wait_until(lambda: metric(port, "lineguard_advisor_records_folded_total") >= len(first), 60,
               "the first half to be folded")
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    port = free_port()
    restarted = start(port)
    produce(settings, rest)
    published = read_recommendations(settings, expect=len(expected), timeout=90)
    ids = [r["id"] for r in published]
    assert len(ids) == len(set(ids)), f"duplicate ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert set(ids) == set(expected)
    for record in published:
        reference = expected[record["id"]]
        if record["trigger"] == "scheduled":  # a closed window: exactly the same, numbers included
            assert comparable(record) == comparable(reference)
        else:  # an immediate trigger judges what had arrived from the three topics when it fired: same id,
            # window and trigger; its content depends on how the topics interleaved (README, "State")
            for key in ("line_id", "window_start", "trigger"):
                assert record[key] == reference[key], key
    overheat = [r for r in published if r["trigger"] == "scheduled" and r["window_start"] == RUN_START_MS + 300_000]
    assert overheat and overheat[0]["root_cause"]["entity_id"] == "urn:ngsi-ld:Machine:line1-oven"
    assert overheat[0]["proposed_actions"][0]["parameter"] == "zone2_setpoint"

    # chat on the running advisor: grounded, authenticated, streamed
    def ask(body: dict, token: str = "t0ken"):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/lines/line1/ask", data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"}, method="POST")
        return urllib.request.urlopen(request, timeout=10)

    answer = json.loads(ask({"question": "why are the cookies burnt?"}).read())
    assert "oven" in answer["answer"].lower() and answer["references"]
    lines = [json.loads(line) for line in ask({"question": "what is wrong with the oven?", "stream": True})]
    assert lines[0]["type"] == "evidence" and lines[-1]["type"] == "done"
    assert "".join(line["text"] for line in lines if line["type"] == "delta")
    with pytest.raises(urllib.error.HTTPError) as refused:
        ask({"question": "hi"}, token="wrong")
    assert refused.value.code == 401

    # SIGTERM: a clean stop (checkpoint, flush, commit) with exit status 0
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(30) == 0


def test_advisor_an_executed_change_on_actions_v1_is_not_proposed_again(advisor_process) -> None:
    """State across windows through Kafka: the actuator's `executed` record for the zone 2 change makes the next
    window wait for its effect instead of proposing the change again."""
    settings, start = advisor_process
    records = scenario_records("oven_zone_overheat", until_s=920)
    cut = next(i for i, r in enumerate(records) if r.at_ms >= RUN_START_MS + 615_000)  # window 300-600 closes
    port = free_port()
    start(port)
    produce(settings, records[:cut])
    first = [r for r in read_recommendations(settings, expect=2, timeout=60)
             if r["trigger"] == "scheduled" and r["window_start"] == RUN_START_MS + 300_000]
    assert first and [a["parameter"] for a in first[0]["proposed_actions"]] == ["zone2_setpoint"]
    action = first[0]["proposed_actions"][0]
    producer = Producer(settings)
    at = RUN_START_MS + 615_000
    producer.produce("actions.v1", f"{first[0]['id']}-a0", {
        "action_id": f"{first[0]['id']}-a0", "recommendation_id": first[0]["id"], "line_id": "line1",
        "machine_entity_id": action["machine_entity_id"], "parameter": "zone2_setpoint", "value": action["value"],
        "previous_value": 190.0, "unit_code": "CEL", "mode": "approve", "status": "executed", "actor": "alice",
        "created_at": at, "updated_at": at})
    assert producer.flush(30) == 0
    producer.close()
    wait_until(lambda: metric(port, "lineguard_advisor_memory_records_total") >= 1, 30, "the action to be read")
    produce(settings, records[cut:])
    published = read_recommendations(settings, expect=3, timeout=60)
    later = [r for r in published if r["trigger"] == "scheduled" and r["window_start"] == RUN_START_MS + 600_000]
    assert later, [(r["trigger"], r["window_start"]) for r in published]
    assert later[0]["category"] == "process_deviation" and later[0]["proposed_actions"] == []
    assert "waiting for its effect" in later[0]["steps"][0]
    assert later[0]["root_causes"][0]["waiting"]
