"""Two normalizer workers in one group on Tansu: the alarm state moves with raw.alarms.v1's partitions.

Worker A raises one alarm per line alone; worker B joins, and each then holds (and restored from the alarm
changelog) only the alarms of its own raw.alarms.v1 partitions. A second raise of every alarm, handled by whichever
worker owns it now, continues the count (raise_count 2, sequence 2); B leaves (SIGTERM), A takes its partitions
back from the changelog, and a third raise counts 3.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from metrics_text import by_partition, scrape, total
from polling import false_while_raising, wait_for

from lineguard.kafka import Producer, read_topic
from lineguard.partitioning import partition_for
from lineguard.plant import default_plant_path, write_plant_lines
from lineguard.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "normalizer"))
from normalizer_process import NormalizerProcess, normalizer_env  # noqa: E402

pytestmark = pytest.mark.integration

LINES = 6
PARTITIONS = 3  # raw.alarms.v1 in the catalog (the alarm changelog is created with the same count)
T0 = 1_764_400_000_000
GROUP = "normalizer-scale"


def raw_alarm(device: str, n: int) -> dict:
    at = T0 + n * 60_000
    return {"id": f"{device}:{n}", "device": device, "alarm_type": "ZONE1_HIGH", "action": "raise",
            "severity": "major", "message": None, "observed_at": at, "received_at": at,
            "source": {"protocol": "mqtt", "device": device, "address": "a", "position": None, "received_by": None}}


def owned(worker: NormalizerProcess) -> set[int]:
    samples = scrape(worker.port).get("lineguard_normalizer_alarm_partitions_owned", {})
    return {p for p, v in by_partition(samples).items() if v}


def restored(worker: NormalizerProcess) -> dict[int, float]:
    return by_partition(scrape(worker.port).get("lineguard_normalizer_alarm_changelog_records_restored_total", {}))


@pytest.fixture
def setup(make_settings: Callable[..., Settings], create_topics: Callable[[Settings], None],
          tmp_path: Path) -> Iterator[tuple[Settings, Callable[[str], NormalizerProcess]]]:
    settings = make_settings()
    create_topics(settings)
    plant = write_plant_lines(default_plant_path(), LINES, tmp_path / "plant.yaml")
    started: list[NormalizerProcess] = []

    def worker(name: str) -> NormalizerProcess:
        env = normalizer_env(settings, LINEGUARD_LAKE_ENABLED="false", LINEGUARD_GROUP_ID=GROUP,
                             LINEGUARD_PLANT_FILE=str(plant), LINEGUARD_SERVICE_NAME="normalizer")
        proc = NormalizerProcess(env, tmp_path / f"normalizer-{name}.log")
        proc.start()
        started.append(proc)
        return proc

    yield settings, worker
    for proc in started:
        proc.ensure_stopped()


def test_alarm_state_moves_with_its_partitions_and_keeps_counting(setup) -> None:
    settings, worker = setup
    devices = [f"line{n}-oven" for n in range(1, LINES + 1)]
    partition_of = {d: partition_for(d, PARTITIONS) for d in devices}
    assert set(partition_of.values()) == set(range(PARTITIONS)), "every partition needs an alarm for this test"
    feed = Producer(settings)

    def raise_all(n: int) -> None:
        for device in devices:
            feed.produce("raw.alarms.v1", device, raw_alarm(device, n))
        assert feed.flush(10) == 0

    def published() -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for record in read_topic(settings, "line.alarms.v1"):
            out.setdefault(record.value["raw_id"], []).append(record.value)
        return out

    a = worker("a")
    a.wait_ready()
    raise_all(1)
    assert wait_for(lambda: a.records_in() >= LINES, timeout=30), a.tail()
    assert owned(a) == set(range(PARTITIONS))

    before_b = restored(a)
    b = worker("b")
    b.wait_ready()
    # The rebalance: raw.alarms.v1's partitions split between the two, none held twice.
    assert wait_for(false_while_raising(lambda: bool(owned(a)) and bool(owned(b)) and not owned(a) & owned(b)
                         and owned(a) | owned(b) == set(range(PARTITIONS))), timeout=45, interval=0.3), \
        a.tail() + b.tail()
    mine_a, mine_b = owned(a), owned(b)
    # Each restored only the changelog partitions of its own raw.alarms.v1 partitions.
    assert set(restored(b)) == mine_b, (restored(b), mine_b)
    after = restored(a)
    assert {p for p in after if after[p] > before_b.get(p, 0)} <= mine_a, (before_b, after, mine_a)
    assert all(restored(b)[p] >= 2 for p in mine_b)  # the seed marker and the alarm(s) of the partition
    # ... and holds only their alarms: A dropped the ones of the partitions it gave up.
    assert total(scrape(a.port), "lineguard_normalizer_alarms_active") == \
        sum(1 for d in devices if partition_of[d] in mine_a)
    assert total(scrape(b.port), "lineguard_normalizer_alarms_active") == \
        sum(1 for d in devices if partition_of[d] in mine_b)

    raise_all(2)
    assert wait_for(lambda: a.records_in() + b.records_in() >= 2 * LINES, timeout=30), a.tail() + b.tail()
    assert b.records_in() >= 1  # B handled the second raise of its partitions' alarms
    assert b.stop() == 0, b.tail()  # B leaves the group: A takes its partitions back from the changelog
    assert wait_for(false_while_raising(lambda: owned(a) == set(range(PARTITIONS))), timeout=45, interval=0.3), \
        a.tail()
    raise_all(3)
    assert wait_for(lambda: all(f"{d}:3" in published() for d in devices), timeout=30), a.tail()
    assert a.stop() == 0, a.tail()

    states = published()
    for device in devices:
        for n in (1, 2, 3):
            outs = states[f"{device}:{n}"]
            assert {(o["raise_count"], o["sequence"], o["raised_at"]) for o in outs} == \
                {(n, n, T0 + 60_000)}, (device, n, outs)
    # The changelog: every alarm's changes in the raw.alarms.v1 partition of its device, and one seed marker per
    # partition (the first assignment found it empty; no later one read line.alarms.v1 again).
    placed: dict[tuple[str, int], int] = {}
    for record in read_topic(settings, "normalizer.alarms.changelog.v1", decode=False):
        key = (record.key.decode(), record.partition)
        placed[key] = placed.get(key, 0) + 1
    assert {k: v for k, v in placed.items() if k[0] == "__seeded__"} == \
        {("__seeded__", p): 1 for p in range(PARTITIONS)}
    assert {k: v for k, v in placed.items() if k[0] != "__seeded__"} == \
        {(f"urn:ngsi-ld:Alert:{d}-ZONE1_HIGH", partition_of[d]): 3 for d in devices}
