"""Three advisor workers over a plant of 12 lines on Tansu; one is SIGKILLed in the middle of a window.

The others take over its partitions with the windows it had open (restored from the changelog partitions of
exactly those partitions), and the recommendations published are those of an uninterrupted run, none twice.
Event time is the records' own (the scenario driver's fast clock), so 13 simulated minutes take seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from metrics_text import by_partition, scrape
from polling import false_while_raising, wait_for
from scenario_driver import RUN_START_MS, UnifiedRecord, run_scenario

from lineguard.embedded import free_port
from lineguard.kafka import Producer, read_topic
from lineguard.partitioning import partition_for
from lineguard.plant import default_plant_path, load_plant, write_plant_lines
from services.advisor.engine import LineState, WindowEngine
from services.advisor.models import ModelAlias, create_provider
from services.advisor.recommend import Advisor
from services.advisor.retrieval import Retriever
from services.advisor.settings import DOCS_DIR
from services.advisor.window import LineHistory, LineWindow

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
LINES = 12
PARTITIONS = 3  # the catalog's line topics (and so the changelog)
TOPIC_BY_KIND = {"observations": "line.observations.v1", "alarms": "line.alarms.v1",
                 "inspections": "line.inspections.v1"}


def for_line(records: list[UnifiedRecord], line: str) -> list[UnifiedRecord]:
    """line1's records as line `line` would send them (ids, entities and devices renamed)."""
    if line == "line1":
        return records
    return [UnifiedRecord(r.kind, json.loads(json.dumps(r.value).replace("line1", line)), r.at_ms) for r in records]


def metrics(port: int) -> dict[str, dict[str, float]]:
    """name -> {labels: value} from a worker's /metrics."""
    return scrape(port)


def owned(port: int) -> set[int]:
    return {p for p, v in by_partition(metrics(port).get("lineguard_advisor_partitions_owned", {})).items() if v}


def total(port: int, name: str) -> float:
    return sum(metrics(port).get(name, {}).values())


@pytest.fixture
def workers(make_settings, create_topics, tmp_path) -> Iterator:
    settings = make_settings()
    create_topics(settings)
    plant_file = write_plant_lines(default_plant_path(), LINES, tmp_path / "plant.yaml")
    procs: dict[int, subprocess.Popen] = {}

    def start(port: int) -> None:
        env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
               "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix, "LINEGUARD_HTTP_PORT": str(port),
               "LINEGUARD_HTTP_HOST": "127.0.0.1", "LINEGUARD_MODEL_ALIAS": "analysis-only",
               "LINEGUARD_CHECKPOINT_INTERVAL_S": "0.5", "LINEGUARD_LOG_LEVEL": "WARNING",
               "LINEGUARD_GROUP_ID": "advisor-scale", "LINEGUARD_PLANT_FILE": str(plant_file),
               "LINEGUARD_IDLE_CLOSE_S": "600", "LINEGUARD_KAFKA_SESSION_TIMEOUT_MS": "6000"}
        with open(tmp_path / f"advisor-{port}.log", "w") as log_file:
            procs[port] = subprocess.Popen([sys.executable, "-m", "services.advisor"], cwd=ROOT, env=env,
                                           stdout=log_file, stderr=subprocess.STDOUT)

    yield settings, plant_file, start, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_killed_workers_lines_move_with_their_open_windows_and_nothing_is_published_twice(workers) -> None:
    settings, plant_file, start, procs = workers
    plant = load_plant(plant_file)
    _, overheat = run_scenario(load_plant(default_plant_path()), "oven_zone_overheat", duration_s=760,
                               reading_every_s=6.0)
    base = list(overheat)
    per_line = {line: for_line(base, line) for line in plant.lines}
    engine, expected, due_windows = WindowEngine(), set(), {}
    for line, records in per_line.items():
        state = LineState(line)
        for record in records:
            for due in engine.add_and_advance(state, record.kind, record.value):
                expected.add(due.id)
                due_windows[due.id] = due
    assert len(expected) >= 3 * LINES

    began = time.monotonic()
    timings: dict[str, float] = {}
    ports = [free_port() for _ in range(3)]
    for port in ports:
        start(port)
    # each worker owns exactly one partition of the three once the group is stable
    assert wait_for(false_while_raising(lambda: [len(owned(p)) for p in ports] == [1, 1, 1]
                         and set().union(*(owned(p) for p in ports)) == set(range(PARTITIONS))), 75, 0.3), \
        "the group did not settle on one partition per worker"
    timings["group settled"] = time.monotonic() - began
    line_partition = {line: partition_for(line, PARTITIONS) for line in plant.lines}

    cut = RUN_START_MS + 450_000  # the middle of window 300-600 s
    merged = sorted((r for records in per_line.values() for r in records), key=lambda r: r.at_ms)
    first = [r for r in merged if r.at_ms < cut]
    rest = [r for r in merged if r.at_ms >= cut]
    producer = Producer(settings)
    for record in first:
        producer.produce(TOPIC_BY_KIND[record.kind], record.value["line_id"], record.value)
    assert producer.flush(30) == 0
    assert wait_for(false_while_raising(
        lambda: sum(total(p, "lineguard_advisor_records_folded_total") for p in ports) >= len(first)), 60, 0.3), \
        "the first part was not folded"
    folded_at = time.monotonic()
    # Every worker's state is in the changelog once its sink holds no offset back (the gauge is reported every
    # second, so only a reading taken after the folding counts).
    assert wait_for(false_while_raising(lambda: time.monotonic() > folded_at + 1.5 and all(
        total(p, "lineguard_advisor_uncommitted_records") == 0 for p in ports)), 30, 0.3), "no checkpoint"
    timings["first part folded and checkpointed"] = time.monotonic() - began
    for port in ports:  # nothing was in the changelog when they started: nothing restored yet
        assert total(port, "lineguard_advisor_changelog_records_restored_total") == 0

    # the victim: the worker of the partition with the most lines (murmur2 spreads 12 keys unevenly)
    lines_of = Counter(line_partition.values())
    victim = max(ports, key=lambda p: lines_of[next(iter(owned(p)))])
    survivors = [p for p in ports if p != victim]
    (victim_partition,) = owned(victim)
    victim_lines = sorted(line for line, p in line_partition.items() if p == victim_partition)
    assert len(victim_lines) >= 4
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait(10)

    for record in rest:
        producer.produce(TOPIC_BY_KIND[record.kind], record.value["line_id"], record.value)
    assert producer.flush(30) == 0
    producer.close()
    assert wait_for(false_while_raising(
        lambda: set().union(*(owned(p) for p in survivors)) == set(range(PARTITIONS))), 45, 0.3), \
        "the survivors did not take over the victim's partition"
    timings["partition taken over"] = time.monotonic() - began

    published: list[dict] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        published = [r.value for r in read_topic(settings, "recommendations.v1", quiet_s=0.5)]
        if {r["id"] for r in published} >= expected:
            break
        time.sleep(1.0)
    time.sleep(1.5)  # a duplicate would come late
    published = [r.value for r in read_topic(settings, "recommendations.v1", quiet_s=0.5)]
    ids = Counter(r["id"] for r in published)
    assert not [i for i, n in ids.items() if n > 1], "published twice"
    assert set(ids) == expected
    timings["all published"] = time.monotonic() - began

    # The victim's lines: their window 300-600 s was open at the kill and closed on a survivor, with the records
    # folded before the kill (the same recommendation as an uninterrupted run, numbers included).
    advisor = Advisor(plant, Retriever.from_folder(DOCS_DIR), create_provider(ModelAlias("a", "analysis", "x")))
    for record in published:
        if record["line_id"] in victim_lines and record["trigger"] == "scheduled" \
                and record["window_start"] == RUN_START_MS + 300_000:
            due = due_windows[record["id"]]
            reference = asyncio.run(advisor.recommend(LineWindow.from_dict(due.window),
                                                      LineHistory.from_dict(due.history), due.trigger,
                                                      rec_id=due.id, now_ms=0)).record
            assert {k: v for k, v in record.items() if k != "created_at"} == \
                {k: v for k, v in reference.items() if k != "created_at"}
            assert record["root_cause"]["entity_id"] == f"urn:ngsi-ld:Machine:{record['line_id']}-oven"

    # Each survivor restored only partitions it owns (never the whole changelog), and the victim's partition
    # was restored by the survivor that took it.
    changelog = Counter(r.partition for r in read_topic(settings, "advisor.windows.changelog.v1", decode=False))
    restored = {p: by_partition(metrics(p).get("lineguard_advisor_changelog_records_restored_total", {}))
                for p in survivors}
    for port in survivors:
        mine = owned(port)
        assert set(restored[port]) <= mine, (restored[port], mine)
        assert all(0 < n <= changelog[partition] for partition, n in restored[port].items())
        assert sum(restored[port].values()) < sum(changelog.values()) or mine == set(range(PARTITIONS))
    taker = next(p for p in survivors if victim_partition in owned(p))
    assert restored[taker].get(victim_partition, 0) > 0
    print(f"\nchangelog records per partition {dict(changelog)}; restored per worker "
          f"{ {p: dict(r) for p, r in restored.items()} }; victim partition {victim_partition} "
          f"({len(victim_lines)} lines); seconds: { {k: round(v, 1) for k, v in timings.items()} }")
