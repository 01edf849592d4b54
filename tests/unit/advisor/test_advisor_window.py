"""Window aggregation: statistics, dedup, serialization, bounds."""

from __future__ import annotations

import json

import pytest

from services.advisor.window import LineHistory, LineWindow, window_bounds

OVEN = "urn:ngsi-ld:Machine:line1-oven"


def obs(i: int, value, at: int, attribute: str = "zone2_temperature") -> dict:
    return {"id": f"o{i}", "entity_id": OVEN, "attribute": attribute, "value": value, "unit_code": "CEL",
            "observed_at": at}


def test_advisor_window_attribute_statistics_and_trend() -> None:
    window = LineWindow("line1", 0, 300_000)
    for i in range(11):
        window.add("observations", obs(i, 190.0 + i, i * 6_000))  # +1 C every 6 s = +10 C/min
    stats = window.attribute(OVEN, "zone2_temperature")
    assert stats is not None
    assert (stats.count, stats.min, stats.max, stats.last) == (11, 190.0, 200.0, 200.0)
    assert stats.mean == pytest.approx(195.0)
    assert stats.trend_per_min == pytest.approx(10.0)
    assert 196.0 < stats.recent < 200.0  # follows the latest readings


def test_advisor_window_deduplicates_replayed_records() -> None:
    window = LineWindow("line1", 0, 300_000)
    assert window.add("observations", obs(1, 190.0, 1000))
    assert not window.add("observations", obs(1, 190.0, 1000))
    assert window.attribute(OVEN, "zone2_temperature").count == 1
    assert window.events == 1


def test_advisor_window_states_alarms_inspections() -> None:
    window = LineWindow("line1", 0, 300_000)
    conveyor = "urn:ngsi-ld:Machine:line1-cooling-conveyor"
    window.add("observations", {"id": "s1", "entity_id": conveyor, "attribute": "state", "value": "running",
                                "observed_at": 1000})
    window.add("observations", {"id": "s2", "entity_id": conveyor, "attribute": "state", "value": "fault",
                                "observed_at": 2000})
    alarm = {"alarm_id": "a", "entity_id": conveyor, "alarm_type": "stopped", "severity": "critical",
             "state": "active", "updated_at": 2000, "raw_id": "r1", "message": "stopped"}
    window.add("alarms", alarm)
    for i, defects in enumerate([[], [{"defect_class": "burnt"}], [{"defect_class": "burnt"},
                                                                   {"defect_class": "cracked"}]]):
        window.add("inspections", {"id": f"i{i}", "station": "detector", "captured_at": 1000 * i,
                                   "station_entity_id": "urn:ngsi-ld:Machine:line1-detector",
                                   "verdict": "defective" if defects else "ok", "defects": defects})
    assert window.state(conveyor, "state").last == "fault"
    assert window.alarms["a"].active and window.alarms["a"].raises == 1
    station = window.stations["detector"]
    assert (station.items, station.defective, station.by_class) == (3, 2, {"burnt": 2, "cracked": 1})
    assert station.rate("burnt") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="unknown record kind"):
        window.add("weather", {})


def test_advisor_window_counts_abstentions_as_not_judged() -> None:
    window = LineWindow("line1", 0, 300_000)
    verdicts = ["ok", "defective"] + ["abstained"] * 6
    for i, verdict in enumerate(verdicts):
        window.add("inspections", {"id": f"i{i}", "station": "detector", "captured_at": 1000 * (i + 1),
                                   "station_entity_id": "urn:ngsi-ld:Machine:line1-detector", "verdict": verdict,
                                   "defects": [{"defect_class": "burnt"}] if verdict == "defective" else []})
    station = window.stations["detector"]
    # an abstention is neither a defect nor a good item: the rates are over the judged items only
    assert (station.items, station.defective, station.not_judged) == (2, 1, 6)
    assert station.rate("burnt") == pytest.approx(1 / 2)
    assert (station.first_at, station.last_at) == (1000, 8000)  # the station did report: not silent
    copy = LineWindow.from_dict(json.loads(json.dumps(window.to_dict())))
    assert copy.stations["detector"].not_judged == 6
    older = window.to_dict()  # a changelog written before abstentions were counted still loads
    del older["stations"]["detector"]["not_judged"]
    assert LineWindow.from_dict(older).stations["detector"].not_judged == 0


def test_advisor_window_round_trips_through_json() -> None:
    window = LineWindow("line1", 0, 300_000)
    for i in range(5):
        window.add("observations", obs(i, 180.0 + i, i * 1000))
    window.add("observations", obs(99, "oops", 1000, attribute="state"))
    copy = LineWindow.from_dict(json.loads(json.dumps(window.to_dict())))
    assert copy.to_dict() == window.to_dict()
    assert copy.attribute(OVEN, "zone2_temperature").trend_per_min == window.attribute(
        OVEN, "zone2_temperature").trend_per_min
    assert not copy.add("observations", obs(3, 1.0, 1))  # dedup ids survive the round trip
    empty = LineWindow.from_dict(json.loads(json.dumps(LineWindow("line1", 0, 1).to_dict())))
    assert empty.events == 0


def test_advisor_window_bounds_align_to_the_epoch() -> None:
    assert window_bounds(1_764_403_200_000 + 299_999, 300_000) == (1_764_403_200_000, 1_764_403_500_000)
    assert window_bounds(1_764_403_500_000, 300_000)[0] == 1_764_403_500_000


def test_advisor_history_learns_report_intervals() -> None:
    history = LineHistory()
    window = LineWindow("line1", 0, 300_000)
    for i in range(150):
        window.add("observations", obs(i, 190.0, i * 2000))
    history.update(window)
    assert history.last_seen[OVEN] == 298_000
    assert history.interval_ms[OVEN] == pytest.approx(2000.0)
    assert LineHistory.from_dict(history.to_dict()) == history
