"""Alarm restore reads line.alarms.v1 to its true end on the real broker: Tansu reports the high watermark of a
partition as the first offset of its last batch + 1, so 1,000 AlarmState records produced as one batch give a
watermark of 1 and a watermark-bounded read stops after the first record. The restored state must be the state
after the last record, and what the service publishes next must continue from it (count, raise time, sequence)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from normalizer_process import NormalizerProcess, normalizer_env
from polling import wait_for

from lineguard.kafka import Producer, read_topic
from lineguard.plant import default_plant_path, load_plant
from lineguard.settings import Settings
from services.normalizer.mapping import Normalizer

pytestmark = pytest.mark.integration

T0 = 1_764_400_000_000
RECORDS = 1000


def raw_alarm(rid: str, action: str, at: int) -> dict:
    return {"id": rid, "device": "line1-oven", "alarm_type": "ZONE1_HIGH", "action": action, "severity": "major",
            "message": None, "observed_at": at, "received_at": at,
            "source": {"protocol": "mqtt", "device": "line1-oven", "address": "a", "position": None,
                       "received_by": None}}


def test_restore_reads_a_single_batch_topic_to_its_true_end(make_settings: Callable[..., Settings],
                                                            create_topics: Callable[[Settings], None],
                                                            tmp_path: Path) -> None:
    settings = make_settings()
    create_topics(settings)
    # 998 changes of one alarm as a previous run published them: raise, raise, clear, raise, raise, clear, ...
    # ending with two raises (active, raise_count 2), then two copies of early changes republished by a replay.
    history = Normalizer(load_plant(default_plant_path()))
    published = []
    for i in range(RECORDS - 2):
        action = "clear" if i % 3 == 2 else "raise"
        published.append(history.alarm(raw_alarm(f"h{i}", action, T0 + i * 1000)))
    last = published[-1]
    published += [dict(published[2]), dict(published[3])]  # replayed copies of an old clear and raise
    assert last["state"] == "active" and last["raise_count"] == 2 and last["sequence"] == RECORDS - 2
    producer = Producer(settings, **{"linger.ms": 1000, "batch.num.messages": 10_000, "batch.size": 10_000_000})
    for out in published:
        producer.produce("line.alarms.v1", "line1", out)
    assert producer.close(20) == 0

    service = NormalizerProcess(normalizer_env(settings, LINEGUARD_LAKE_ENABLED="false",
                                               LINEGUARD_GROUP_ID="normalizer-restore"), tmp_path / "normalizer.log")
    try:
        service.start()
        service.wait_ready()
        restored = [json.loads(line) for line in service.tail().splitlines() if '"alarm_state_restored"' in line]
        assert restored and restored[-1]["records"] == RECORDS, service.tail()
        assert restored[-1]["active"] == 1
        feed = Producer(settings)
        feed.produce("raw.alarms.v1", "line1-oven", raw_alarm("after", "clear", T0 + RECORDS * 1000))
        assert feed.close(10) == 0
        assert wait_for(lambda: service.records_in() >= 1, timeout=30), service.tail()
        assert service.stop() == 0, service.tail()
    finally:
        service.ensure_stopped()
    outputs = [r.value for r in read_topic(settings, "line.alarms.v1") if r.value["raw_id"] == "after"]
    assert len(outputs) == 1
    cleared = outputs[0]
    assert cleared["state"] == "cleared" and cleared["raise_count"] == 2
    assert cleared["raised_at"] == last["raised_at"] and cleared["sequence"] == RECORDS - 1
    assert cleared["duration_ms"] == T0 + RECORDS * 1000 - last["raised_at"]
