"""Tumbling windows, triggers and their rate limits, on event time; state survives a JSON round trip."""

from __future__ import annotations

import json

from services.advisor.engine import EngineConfig, LineState, WindowEngine

T0 = 1_764_403_200_000
OVEN = "urn:ngsi-ld:Machine:line1-oven"


def obs(i: int, at: int, value: float = 190.0) -> dict:
    return {"id": f"o{i}", "entity_id": OVEN, "attribute": "zone2_temperature", "value": value,
            "unit_code": "CEL", "observed_at": at}


def alarm(i: int, at: int) -> dict:
    return {"alarm_id": "oven-zone2", "entity_id": OVEN, "alarm_type": "zone2_temperature_high",
            "severity": "critical", "state": "active", "updated_at": at, "raw_id": f"r{i}", "message": "hot"}


def test_advisor_engine_closes_windows_on_event_time_with_grace() -> None:
    engine, state = WindowEngine(EngineConfig(grace_ms=10_000)), LineState("line1")
    assert engine.add_and_advance(state, "observations", obs(1, T0 + 1000)) == []
    assert engine.add_and_advance(state, "observations", obs(2, T0 + 305_000)) == []  # within the grace
    (due,) = engine.add_and_advance(state, "observations", obs(3, T0 + 310_000))
    assert (due.trigger, due.window_start, due.window_end) == ("scheduled", T0, T0 + 300_000)
    assert due.id in state.pending and T0 not in state.windows
    assert engine.add_and_advance(state, "observations", obs(4, T0 + 2000)) == []  # late: its window is closed
    assert state.late_records == 1
    engine.mark_done(state, due.id)
    assert due.id not in state.pending and list(state.done) == [due.id]


def test_advisor_engine_alarm_storm_gives_one_immediate_evaluation() -> None:
    engine, state = WindowEngine(), LineState("line1")
    dues = [d for i in range(100) for d in engine.add_and_advance(state, "alarms", alarm(i, T0 + 1000 + i * 100))]
    assert [d.trigger for d in dues] == ["critical_alarm"]
    assert dues[0].window_end == T0 + 1001  # cut where it fired
    assert [d.trigger for d in engine.add_and_advance(state, "alarms", alarm(200, T0 + 300_500))] == ["critical_alarm"]
    # a longer cooldown holds back the next window's alarm too
    engine, state = WindowEngine(EngineConfig(cooldown_ms=400_000)), LineState("line1")
    assert [d.trigger for d in engine.add_and_advance(state, "alarms", alarm(1, T0 + 1000))] == ["critical_alarm"]
    assert engine.add_and_advance(state, "alarms", alarm(2, T0 + 300_500)) == []


def test_advisor_engine_replayed_records_change_nothing() -> None:
    engine, state = WindowEngine(), LineState("line1")
    engine.add_and_advance(state, "alarms", alarm(1, T0 + 1000))
    before = json.dumps(state.to_dict(), sort_keys=True)
    assert engine.add_and_advance(state, "alarms", alarm(1, T0 + 1000)) == []
    assert json.dumps(state.to_dict(), sort_keys=True) == before


def test_advisor_engine_defect_spike_and_silence() -> None:
    engine, state = WindowEngine(), LineState("line1")
    dues = []
    for i in range(40):
        defects = [{"defect_class": "burnt"}] if i % 2 else []
        dues += engine.add_and_advance(state, "inspections", {
            "id": f"i{i}", "station": "detector", "station_entity_id": "urn:ngsi-ld:Machine:line1-detector",
            "captured_at": T0 + i * 1000, "verdict": "defective" if defects else "ok", "defects": defects})
    assert [d.trigger for d in dues] == ["defect_spike"]
    # the detector goes quiet while the oven keeps reporting: silence
    dues = [d for i in range(100) for d in engine.add_and_advance(state, "observations", obs(i, T0 + 40_000 + i * 2000))]
    assert [d.trigger for d in dues] == ["silence"]


def test_advisor_engine_state_round_trips_and_idle_close() -> None:
    engine, state = WindowEngine(), LineState("line1")
    for i in range(10):
        engine.add_and_advance(state, "observations", obs(i, T0 + i * 1000))
    engine.add_and_advance(state, "alarms", alarm(1, T0 + 11_000))
    copy = LineState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert copy.to_dict() == state.to_dict()
    assert engine.close_idle(copy, idle_for_ms=1000) == []
    (due,) = engine.close_idle(copy, idle_for_ms=120_000)
    assert due.trigger == "scheduled" and due.window["events"] == 11
