"""The alarm state by input partition: the changelog copy goes to the raw record's partition, a revoked partition's
alarms (and their remembered raw ids) are dropped, and a restored partition's alarms count on."""

from __future__ import annotations

import json

from lineguard.kafka import Record
from lineguard.plant import default_plant_path, load_plant
from lineguard.topics import NORMALIZER_ALARMS_CHANGELOG, RAW_ALARMS
from services.normalizer.alarm_state import AlarmChangelog, device_of
from services.normalizer.mapping import ALARMS, Normalizer
from services.normalizer.service import Pipeline

T0 = 1_764_400_000_000


def raw(rid: str, device: str, action: str = "raise", at: int = T0) -> dict:
    return {"id": rid, "device": device, "alarm_type": "ZONE1_HIGH", "action": action, "severity": "major",
            "message": None, "observed_at": at, "received_at": at,
            "source": {"protocol": "mqtt", "device": device, "address": "a", "position": None, "received_by": None}}




def pipeline() -> tuple[Pipeline, Normalizer]:
    normalizer = Normalizer(load_plant(default_plant_path()))
    changelog = AlarmChangelog.__new__(AlarmChangelog)  # no settings needed for output(): the hooks are not run
    changelog.tracker = normalizer.alarms
    return Pipeline(normalizer, "normalizer-unit-partitions", lake=False, changelog=changelog), normalizer


def test_every_alarm_state_also_goes_to_the_changelog_partition_of_its_raw_record() -> None:
    pipe, _ = pipeline()
    outputs = pipe.handle(Record(RAW_ALARMS, 2, 7, b"line1-oven", raw("r1", "line1-oven"), [], 0, None))
    assert [o.topic for o in outputs] == [ALARMS, NORMALIZER_ALARMS_CHANGELOG]
    published, copy = outputs
    assert published.key == "line1" and published.partition == -1  # line.alarms.v1: by line, the key's hash
    assert copy.partition == 2 and copy.key == published.value["alarm_id"]
    assert json.loads(copy.value) == published.value
    assert pipe.records_out["alarms"] == 1  # the changelog copy is not a unified record


def test_a_revoked_partition_is_forgotten_and_a_restored_one_counts_on() -> None:
    pipe, normalizer = pipeline()
    tracker = normalizer.alarms
    first = pipe.handle(Record(RAW_ALARMS, 0, 0, None, raw("a1", "line1-oven"), [], 0, None))
    pipe.handle(Record(RAW_ALARMS, 1, 0, None, raw("b1", "line1-mixer"), [], 0, None))
    assert tracker.active_count() == 2 and tracker.partitions() == {0, 1}

    assert tracker.drop_partitions({0}) == 1
    assert tracker.active_count() == 1 and tracker.partitions() == {1}
    assert "urn:ngsi-ld:Alert:line1-oven-ZONE1_HIGH" not in tracker.snapshot()

    # Partition 0 comes back (restored from its changelog partition): the alarm continues, the raw id is known.
    tracker.restore([json.loads(first[1].value)], partition=0)
    again = pipe.handle(Record(RAW_ALARMS, 0, 0, None, raw("a1", "line1-oven"), [], 0, None))
    assert again[0].value == first[0].value  # a replayed raw alarm: the same output
    second = pipe.handle(Record(RAW_ALARMS, 0, 1, None, raw("a2", "line1-oven", at=T0 + 5000), [], 0, None))
    assert (second[0].value["raise_count"], second[0].value["sequence"], second[0].value["raised_at"]) == (2, 2, T0)


def test_the_device_of_an_alarm_state_is_read_back_from_its_id() -> None:
    state = Normalizer(load_plant(default_plant_path())).alarm(raw("x", "line1-oven"))
    assert device_of(state) == "line1-oven"
    assert device_of({"alarm_id": "urn:ngsi-ld:Alert:dev-with-dashes-T", "alarm_type": "T"}) == "dev-with-dashes"
    assert device_of({"alarm_id": "something else", "alarm_type": "T"}) is None
