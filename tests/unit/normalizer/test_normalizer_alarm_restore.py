"""Alarm state across crashes: the published changes are folded by alarm id and sequence, so the copies a replay
republishes never roll the state back, wherever a crash hits (during the first run and again during the replay).

The simulation follows the consumer loop's contract: raw alarms are applied in batches, each output is produced
(appended to the topic), and the batch's offset is committed only after all its outputs are on the topic. A crash
loses the process's memory; the topic and the committed offset stay. A restarted process restores from the
whole topic (read to its true end) and replays from the committed offset.
"""

from __future__ import annotations

import pytest

from lineguard.avro import AvroSerde
from lineguard.plant import default_plant_path, load_plant
from services.normalizer.mapping import ALARMS, Normalizer

T0 = 1_764_400_000_000
BATCH = 3


def raw_alarm(rid: str, action: str, at: int, device: str = "line1-oven", alarm_type: str = "ZONE1_HIGH",
              severity: str | None = "major") -> dict:
    return {"id": rid, "device": device, "alarm_type": alarm_type, "action": action, "severity": severity,
            "message": rid, "observed_at": at, "received_at": at,
            "source": {"protocol": "mqtt", "device": device, "address": "a", "position": None, "received_by": None}}


# Two alarms interleaved: repeated raises, clears, a second activation, a duplicate from the source (r3 again),
# a severity change, and a clear of an alarm never raised.
RAW = [
    raw_alarm("r1", "raise", T0),
    raw_alarm("m1", "raise", T0 + 1_000, device="line1-mixer", alarm_type="TORQUE_LOW", severity="minor"),
    raw_alarm("r2", "raise", T0 + 2_000, severity="critical"),
    raw_alarm("r3", "clear", T0 + 5_000),
    raw_alarm("r3", "clear", T0 + 5_000),
    raw_alarm("m2", "raise", T0 + 6_000, device="line1-mixer", alarm_type="TORQUE_LOW"),
    raw_alarm("r4", "raise", T0 + 9_000),
    raw_alarm("m3", "clear", T0 + 12_000, device="line1-mixer", alarm_type="TORQUE_LOW"),
    raw_alarm("r5", "raise", T0 + 13_000, severity="warning"),
    raw_alarm("k1", "clear", T0 + 14_000, device="line1-packaging", alarm_type="JAM"),
    raw_alarm("r6", "clear", T0 + 20_000),
]


class Crash(Exception):
    pass


class World:
    """What survives a crash: the topic and the committed offset."""

    def __init__(self) -> None:
        self.topic: list[dict] = []
        self.committed = 0


def run(plant, world: World, crash_at: int | None) -> tuple[Normalizer, int]:
    """One process life: restore, then consume from the committed offset; returns (normalizer, steps taken).
    Steps are: each apply, each produce, each commit; `crash_at` stops the process before that step."""
    normalizer = Normalizer(plant)
    normalizer.alarms.restore(list(world.topic))
    steps = 0

    def step() -> None:
        nonlocal steps
        if crash_at is not None and steps == crash_at:
            raise Crash
        steps += 1

    try:
        offset = world.committed
        while offset < len(RAW):
            batch = RAW[offset:offset + BATCH]
            outputs = []
            for raw in batch:
                step()
                outputs.append(normalizer.alarm(dict(raw)))
            for out in outputs:
                step()
                world.topic.append(dict(out))
            step()
            offset += len(batch)
            world.committed = offset
    except Crash:
        pass
    return normalizer, steps


def final_outputs(topic: list[dict]) -> dict[str, dict]:
    """raw id -> the output it caused (every copy of it must be identical)."""
    seen: dict[str, dict] = {}
    for out in topic:
        previous = seen.setdefault(out["raw_id"], out)
        assert previous == out, f"{out['raw_id']} was published with two different outputs: {previous} / {out}"
    return seen


@pytest.fixture(scope="module")
def plant():
    return load_plant(default_plant_path())


@pytest.fixture(scope="module")
def reference(plant) -> tuple[dict, dict, int]:
    world = World()
    normalizer, steps = run(plant, world, None)
    return normalizer.alarms.snapshot(), final_outputs(world.topic), steps


def test_the_uninterrupted_run_gives_the_expected_states(reference) -> None:
    snapshot, outputs, _ = reference
    oven = "urn:ngsi-ld:Alert:line1-oven-ZONE1_HIGH"
    assert outputs["r2"]["raise_count"] == 2 and outputs["r2"]["severity"] == "critical"
    assert outputs["r3"]["state"] == "cleared" and outputs["r3"]["duration_ms"] == 5_000
    assert outputs["r5"]["raise_count"] == 2 and outputs["r5"]["raised_at"] == T0 + 9_000
    assert outputs["r6"]["duration_ms"] == 11_000 and outputs["r6"]["raise_count"] == 2
    assert outputs["k1"]["raise_count"] == 0 and outputs["k1"]["duration_ms"] is None
    assert [outputs[r]["sequence"] for r in ("r1", "r2", "r3", "r4", "r5", "r6")] == [1, 2, 3, 4, 5, 6]
    assert snapshot[oven] == ("cleared", 6, 0, "", 0)


def test_a_crash_at_every_step_of_a_run_and_of_its_replay_never_rolls_the_state_back(plant, reference) -> None:
    """Crash the first run before step i, crash the replay before step j (every i, every j), then let a third
    process finish: the state and every output equal the uninterrupted run's, and a fourth process restoring from
    that topic alone holds the same state."""
    expected_state, expected_outputs, total = reference
    checked = 0
    for i in range(total):
        for j in range(total + 1):
            world = World()
            run(plant, world, i)
            run(plant, world, j)
            normalizer, _ = run(plant, world, None)
            where = f"crash before step {i}, then before replay step {j}"
            assert normalizer.alarms.snapshot() == expected_state, where
            assert final_outputs(world.topic) == expected_outputs, where
            restored = Normalizer(plant)
            restored.alarms.restore(world.topic)
            assert restored.alarms.snapshot() == expected_state, where
            checked += 1
    assert checked == total * (total + 1) > 500


def test_copies_republished_after_later_changes_are_skipped(plant) -> None:
    """The case from the field: raise, raise, clear, then a replay republished the two raises after the clear.
    Restoring must keep the alarm cleared, and the replayed clear must then be a no-op, not 'already seen' on top
    of a state rolled back to active."""
    first = Normalizer(plant)
    outs = [first.alarm(raw_alarm(r, a, T0 + n * 1000)) for n, (r, a) in
            enumerate((("x1", "raise"), ("x2", "raise"), ("x3", "clear")))]
    topic = [*outs, dict(outs[0]), dict(outs[1])]
    after = Normalizer(plant)
    assert after.alarms.restore(topic) == 5
    assert after.alarms.active_count() == 0
    assert after.alarm(raw_alarm("x3", "clear", T0 + 2000)) == outs[2]
    raised = after.alarm(raw_alarm("x4", "raise", T0 + 9000))
    assert raised["raise_count"] == 1 and raised["raised_at"] == T0 + 9000 and raised["sequence"] == 4


def test_records_without_a_sequence_restore_in_topic_order(plant) -> None:
    """AlarmState records written before `sequence` existed decode with None and still restore."""
    first = Normalizer(plant)
    outs = [first.alarm(raw_alarm("y1", "raise", T0)), first.alarm(raw_alarm("y2", "raise", T0 + 10))]
    legacy = [{**out, "sequence": None} for out in outs]
    after = Normalizer(plant)
    after.alarms.restore(legacy)
    nxt = after.alarm(raw_alarm("y3", "clear", T0 + 70))
    assert nxt["raise_count"] == 2 and nxt["duration_ms"] == 70 and nxt["sequence"] == 3


def test_sequence_travels_in_the_avro_record() -> None:
    serde = AvroSerde()
    out = Normalizer(load_plant(default_plant_path())).alarm(raw_alarm("z1", "raise", T0))
    assert serde.decode(ALARMS, serde.encode(ALARMS, out))["sequence"] == 1
