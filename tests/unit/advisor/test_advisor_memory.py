"""State across windows: actions.v1 and feedback.v1 change what the next window proposes."""

from __future__ import annotations

import json
from pathlib import Path

from scenario_driver import RUN_START_MS, run_scenario

from lineguard.plant import default_plant_path, load_plant
from services.advisor.analysis import Analyzer
from services.advisor.engine import LineState, WindowEngine
from services.advisor.memory import LineMemory
from services.advisor.window import LineHistory, LineWindow

FIXTURES = Path(__file__).parent / "fixtures"
PLANT = load_plant(default_plant_path())
OVEN = "urn:ngsi-ld:Machine:line1-oven"


def overheat():
    doc = json.loads((FIXTURES / "oven_zone_overheat_900.json").read_text())
    return LineWindow.from_dict(doc["window"]), LineHistory.from_dict(doc["history"])


def action(status: str, at: int, rec: str = "rec-1", value: float = 175.0) -> dict:
    return {"action_id": f"{rec}-a0", "recommendation_id": rec, "line_id": "line1", "machine_entity_id": OVEN,
            "parameter": "zone2_setpoint", "value": value, "previous_value": 190.0, "status": status,
            "created_at": at, "updated_at": at}


def test_advisor_an_applied_change_is_not_proposed_again_while_its_effect_is_due() -> None:
    window, history = overheat()
    analyzer = Analyzer(PLANT)
    first = analyzer.analyse(window, history)
    assert [(a.parameter, a.value) for a in first.actions] == [("zone2_setpoint", 175.0)]
    memory = LineMemory()
    memory.note_recommendation("rec-1", first)
    memory.on_action(action("executed", window.end_ms - 60_000), "oven")
    waiting = analyzer.analyse(window, history, memory=memory.memory(window.end_ms))
    assert waiting.actions == [] and waiting.category == "process_deviation"
    assert waiting.waiting and "waiting for its effect" in waiting.steps[0] and "175.0 °C" in waiting.steps[0]
    # once the effect was due and the zone is still hot, the next step is proposed again
    later = analyzer.analyse(window, history, memory=memory.memory(window.end_ms + 3_600_000))
    assert [a.parameter for a in later.actions] == ["zone2_setpoint"]


def test_advisor_a_rejected_change_is_not_repeated_without_new_evidence() -> None:
    window, history = overheat()
    analyzer = Analyzer(PLANT)
    memory = LineMemory()
    memory.note_recommendation("rec-1", analyzer.analyse(window, history))
    memory.on_action(action("pending_approval", window.end_ms - 60_000), "oven")
    memory.on_feedback({"feedback_id": "f1", "recommendation_id": "rec-1", "line_id": "line1", "kind": "rejection",
                        "action_id": "rec-1-a0", "vote": None, "comment": "not now", "operator": "op",
                        "created_at": window.end_ms})
    memory.actions["rec-1-a0"]["status"] = "rejected"
    again = analyzer.analyse(window, history, memory=memory.memory(window.end_ms))
    assert again.actions == [] and any("rejected" in step for step in again.steps)
    # new evidence (the zone 20 C hotter still) lifts the rejection
    stats = window.attribute(OVEN, "zone2_temperature")
    stats.recent += 20.0
    assert [a.parameter for a in analyzer.analyse(window, history,
                                                  memory=memory.memory(window.end_ms)).actions] == ["zone2_setpoint"]


def test_advisor_a_down_vote_with_a_reason_lowers_that_playbook_on_the_line() -> None:
    scenario, records = run_scenario(PLANT, "humidity_and_cooling", duration_s=1230)
    engine, state = WindowEngine(), LineState("line1")
    dues = [d for r in records for d in engine.add_and_advance(state, r.kind, r.value) if d.trigger == "scheduled"]
    due = next(d for d in dues if d.window_start - RUN_START_MS == 900_000)
    analyzer = Analyzer(PLANT)
    window, history = LineWindow.from_dict(due.window), LineHistory.from_dict(due.history)
    before = analyzer.analyse(window, history)
    assert [c.machine_id for c in before.causes] == ["cooling-conveyor", "environment"]
    memory = LineMemory()
    memory.note_recommendation("rec-9", before)
    vote = {"feedback_id": "f9", "recommendation_id": "rec-9", "line_id": "line1", "kind": "vote", "action_id": None,
            "vote": -1, "comment": "the chiller was fine, it was the door", "operator": "op", "created_at": 0}
    memory.on_feedback(vote)
    memory.on_feedback(vote)  # a replayed vote counts once
    assert memory.downvoted == {"cooling-air-cold": 1, "hall-humidity-high": 1}
    memory.downvoted["hall-humidity-high"] = 0  # the vote was about the chiller's playbook only
    after = analyzer.analyse(window, history, memory=memory.memory(window.end_ms))
    assert [c.machine_id for c in after.causes] == ["environment", "cooling-conveyor"]
    # a down-vote without a reason changes nothing
    silent = LineMemory()
    silent.note_recommendation("rec-9", before)
    silent.on_feedback({**vote, "feedback_id": "f10", "comment": None})
    assert silent.downvoted == {}
    assert LineMemory.from_dict(json.loads(json.dumps(memory.to_dict()))).downvoted == memory.downvoted
