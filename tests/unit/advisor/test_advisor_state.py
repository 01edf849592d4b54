"""The advisor's watermark across inputs: an input a moment behind another is waited for (no false silence after
a restart with a backlog), an input that stopped holds only for `source_idle_s` (then its silence is judged)."""

from __future__ import annotations

from lineguard.plant import default_plant_path, load_plant
from services.advisor.engine import LineState, WindowEngine
from services.advisor.state import AdvisorState, ChangelogSink

PLANT = load_plant(default_plant_path())
T0 = 1_764_403_200_000
OVEN = "urn:ngsi-ld:Machine:line1-oven"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state_with(clock: Clock) -> AdvisorState:
    return AdvisorState(PLANT, WindowEngine(), changelog=None, changelog_topic="changelog",  # type: ignore[arg-type]
                        source_idle_s=10.0, clock=clock)


def obs(i: int, at: int) -> dict:
    return {"id": f"o{i}", "line_id": "line1", "entity_id": OVEN, "attribute": "zone2_temperature",
            "value": 190.0, "unit_code": "CEL", "observed_at": at}


def insp(i: int, at: int) -> dict:
    return {"id": f"i{i}", "line_id": "line1", "station": "detector", "verdict": "ok", "defects": [],
            "station_entity_id": "urn:ngsi-ld:Machine:line1-detector", "captured_at": at}


def fold_both(state: AdvisorState, seconds: range) -> None:
    for s in seconds:
        state.fold("line.observations.v1", obs(s, T0 + s * 1000))
        state.fold("line.inspections.v1", insp(s, T0 + s * 1000))


def triggers(dues: list) -> list[str]:
    return [d.trigger for d in dues]


def test_an_input_a_moment_behind_holds_the_watermark_so_its_station_is_not_silent() -> None:
    clock = Clock()
    state = state_with(clock)
    fold_both(state, range(0, 60))
    state.advance(set())
    # a backlog: five minutes of observations reach the advisor before the inspections of the same minutes
    # (another topic, not in Kafka yet: no topic lag shows it)
    dues = [d for s in range(60, 360) for d in state.fold("line.observations.v1", obs(s, T0 + s * 1000))]
    clock.now += 2
    dues += state.advance(set())
    assert "silence" not in triggers(dues)
    assert state.states["line1"].watermark == T0 + 59_000  # held at the inspections' event time
    for s in range(60, 360):
        state.fold("line.inspections.v1", insp(s, T0 + s * 1000))
    clock.now += 1
    dues += state.advance(set())
    assert triggers(dues) == ["scheduled"]  # window 0-300 closes, complete; nothing was silent


def test_an_input_that_stopped_holds_only_for_the_idle_time_then_its_silence_is_judged() -> None:
    clock = Clock()
    state = state_with(clock)
    fold_both(state, range(0, 60))
    dues = state.advance(set())
    camera_last_at = clock.now
    # the camera is switched off; the oven goes on reporting, in real time
    for s in range(60, 200):
        clock.now += 1
        dues += state.fold("line.observations.v1", obs(s, T0 + s * 1000))
        dues += state.advance(set())
        if clock.now - camera_last_at < 10:  # within source_idle_s of the camera's last record: held
            assert state.states["line1"].watermark == T0 + 59_000
        else:
            assert state.states["line1"].watermark == T0 + s * 1000
    assert "silence" in triggers(dues)


def test_after_a_restart_every_input_gets_a_fresh_allowance_from_the_first_new_record() -> None:
    clock = Clock()
    before = state_with(clock)
    fold_both(before, range(0, 60))
    restored: LineState = before.states["line1"]
    clock.now += 300  # down for five minutes, then restored from the changelog
    state = state_with(clock)
    state.states["line1"] = restored
    clock.now += 30  # the backlog starts a while after the restore
    for s in range(60, 200):
        state.fold("line.observations.v1", obs(s, T0 + s * 1000))
    clock.now += 3
    assert "silence" not in triggers(state.advance(set()))
    assert restored.watermark <= T0 + 59_000
    clock.now += 10  # the camera's records never came: it stopped
    assert "silence" in triggers(state.advance(set()))


def test_the_changelog_sink_moves_the_watermarks_on_idle_polls_so_a_stopped_input_is_released() -> None:
    clock = Clock()
    state = state_with(clock)
    advanced: list[list] = []
    sink = ChangelogSink(state, interval_s=3600, advance=lambda: advanced.append(state.advance(set())))
    fold_both(state, range(0, 60))
    for s in range(60, 200):  # the camera stopped; the oven's backlog is read at once
        state.fold("line.observations.v1", obs(s, T0 + s * 1000))
    sink.on_batch_done()
    assert "silence" not in triggers(advanced[-1])  # held: the camera moved a moment ago
    clock.now += 11  # no record comes any more: only the loop's idle polls
    sink.on_idle()
    assert "silence" in triggers(advanced[-1])
