"""Noise control and escalation, on a dict state and a controllable clock."""

from __future__ import annotations

from collections import Counter

from services.notifier.engine import (
    Engine,
    action_item,
    alarm_item,
    due_digests,
    due_escalations,
    recommendation_item,
    step_due_at,
    step_recipients,
)
from services.notifier.rules import parse_rules

RULES = """
defaults: {line_cap: 5, line_cap_window_s: 60, dedup_window_s: 600, startup_grace_s: 30, digest_interval_s: 900,
           recipient_cap: 100}
channels: {console: {type: console}}
groups:
  ops: {channels: [console]}
  leads: {channels: [console]}
  boss: {channels: [console]}
rules:
  - name: critical
    match: {severities: [critical]}
    notify: [ops]
    escalation:
      stages: [{after_s: 300, notify: [leads]}, {after_s: 900, notify: [boss]}]
      remind_every_s: 1800
      max_reminders: 2
  - name: approvals
    match: {kinds: [action]}
    notify: [ops]
    escalation: {stages: [{after_s: 120, notify: [leads]}]}
  - name: rest
    notify: [ops]
"""
T0 = 1_800_000_000.0


def alarm(i: int, *, state: str = "active", severity: str = "major", raised_at: int | None = None,
          alarm_id: str | None = None, at: float = T0) -> dict:
    return {"alarm_id": alarm_id or f"a{i}", "line_id": "line1", "entity_id": f"urn:ngsi-ld:Machine:line1-m{i}",
            "alarm_type": "OVERTEMP", "severity": severity, "state": state,
            "raised_at": raised_at if raised_at is not None else int(at * 1000), "cleared_at": None,
            "duration_ms": None, "raise_count": 1, "message": None, "updated_at": int(at * 1000), "raw_id": "r"}


def engine(started: float = T0 - 3600) -> Engine:
    return Engine(parse_rules(RULES), started)


def test_one_notification_per_state_change_not_per_message() -> None:
    state: dict = {}
    eng = engine()
    decided = []
    for rec in [alarm(1, raised_at=1), alarm(1, raised_at=1), alarm(1, raised_at=1, severity="critical"),
                alarm(1, raised_at=1, severity="critical"), alarm(1, raised_at=1, state="cleared"),
                alarm(1, raised_at=1, state="cleared")]:
        item, why = alarm_item(state, rec)
        decided.append(item.transition if item else why)
        if item is not None:
            assert eng.decide(state, item, T0).status == "notify"
    assert decided == ["raised", "no_state_change", "severity_changed", "no_state_change", "cleared",
                       "no_state_change"]
    # The clear of a raise nobody was told about (held back in the digest) is no news either.
    held, _ = alarm_item(state, alarm(2, severity="minor"))
    assert eng.decide(state, held, T0).reason == "below_threshold"
    assert alarm_item(state, alarm(2, severity="minor", state="cleared")) == (None, "clear_not_notified")
    # A new activation after the clear is a new notification (peers' alarm identity complaint), once the dedup
    # window of the first one has passed (flapping within it is one finding).
    item, _ = alarm_item(state, alarm(1, raised_at=2))
    assert item.transition == "raised" and eng.decide(state, item, T0 + 10).reason == "duplicate"
    item, _ = alarm_item(state, alarm(1, state="cleared", raised_at=2))
    item, _ = alarm_item(state, alarm(1, raised_at=3))
    assert item.transition == "raised" and eng.decide(state, item, T0 + 601).status == "notify"


def test_storm_of_1000_raises_in_a_minute_stays_under_the_line_cap() -> None:
    state: dict = {}
    eng = engine()
    reasons: Counter = Counter()
    sent = 0
    for i in range(1000):
        now = T0 + i * 0.06  # 1,000 raises within 60 s: 50 alarms raised again and again
        item, why = alarm_item(state, alarm(i % 50, raised_at=int(T0 * 1000) + i % 50, at=now))
        if item is None:
            reasons[why] += 1
            continue
        decision = eng.decide(state, item, now)
        if decision.status == "notify":
            sent += 1
        else:
            reasons[decision.reason] += 1
    assert sent == 5
    assert sum(reasons.values()) == 995
    assert reasons["no_state_change"] == 950 and reasons["line_cap"] == 45
    digest = next(v for k, v in state.items() if k.startswith("digest:"))
    assert digest["count"] == 45 and digest["by_reason"] == {"line_cap": 45}


def test_replays_and_repeats_are_deduplicated() -> None:
    state: dict = {}
    eng = engine()
    rec = {"id": "line1|w1|scheduled", "line_id": "line1", "severity": "major", "category": "quality",
           "title": "Burnt cookies", "summary": "s", "root_cause": {"entity_id": "oven"}, "steps": ["x"],
           "created_at": int(T0 * 1000)}
    assert eng.decide(state, recommendation_item(rec), T0).status == "notify"
    assert eng.decide(state, recommendation_item(rec), T0 + 1).reason == "duplicate"  # a replay
    again = {**rec, "id": "line1|w2|scheduled"}  # the same finding in the next window, within the dedup window
    assert eng.decide(state, recommendation_item(again), T0 + 300).reason == "duplicate"
    assert eng.decide(state, recommendation_item({**again, "id": "w3"}), T0 + 700).status == "notify"


def test_start_up_grace_holds_back_all_but_critical_and_old_events_are_stale() -> None:
    state: dict = {}
    eng = engine(started=T0)
    item, _ = alarm_item(state, alarm(1, at=T0 + 5))
    assert eng.decide(state, item, T0 + 5).reason == "startup_grace"
    crit, _ = alarm_item(state, alarm(2, severity="critical", at=T0 + 5))
    assert eng.decide(state, crit, T0 + 5).status == "notify"
    old, _ = alarm_item(state, alarm(3, severity="critical", at=T0 - 3600))
    assert eng.decide(state, old, T0 + 5).reason == "stale"


def test_minor_items_go_to_a_digest_that_is_due_when_its_period_ends() -> None:
    state: dict = {}
    eng = engine()
    item, _ = alarm_item(state, alarm(1, severity="minor"))
    assert eng.decide(state, item, T0).reason == "below_threshold"
    entries = [v for k, v in state.items() if k.startswith("digest:")]
    assert due_digests(entries, eng.period(T0), lambda _id: False) == []
    assert len(due_digests(entries, eng.period(T0 + 900), lambda _id: False)) == 1
    assert due_digests(entries, eng.period(T0 + 900), lambda _id: True) == []


def test_escalation_stages_reminders_and_stop_on_ack_or_clear() -> None:
    state: dict = {}
    eng = engine()
    item, _ = alarm_item(state, alarm(1, severity="critical"))
    decision = eng.decide(state, item, T0)
    entry = decision.escalation
    assert entry is not None and state[f"esc:{item.notification_id}"] == entry
    done: dict[str, int] = {}
    acked: set[str] = set()

    def due(now: float) -> list[int]:
        entries = [v for k, v in state.items() if k.startswith("esc:")]
        return [step for _, step in due_escalations(entries, lambda r: done.get(r, 0), lambda r: r in acked, now)]

    assert due(T0 + 299) == []
    assert due(T0 + 300) == [0] and step_recipients(entry, 0) == ["leads"]
    done[item.notification_id] = 1
    assert due(T0 + 899) == []
    assert due(T0 + 900) == [1] and step_recipients(entry, 1) == ["boss"]
    done[item.notification_id] = 2
    assert due(T0 + 900 + 1800) == [2] and step_recipients(entry, 2) == ["ops", "leads", "boss"]  # a reminder
    done[item.notification_id] = 4
    assert step_due_at(entry, 4) is None  # max_reminders: 2
    done[item.notification_id] = 1
    acked.add(item.notification_id)
    assert due(T0 + 5000) == []  # acknowledged: no more stages
    acked.clear()
    cleared, _ = alarm_item(state, alarm(1, severity="critical", state="cleared"))
    eng.decide(state, cleared, T0 + 400)
    assert state[f"esc:{item.notification_id}"]["closed"] and due(T0 + 5000) == []


def test_a_pending_approval_is_never_held_back_and_its_result_closes_the_escalation() -> None:
    state: dict = {}
    eng = engine(started=T0)  # inside the grace period
    action = {"action_id": "act1", "recommendation_id": "rec1", "line_id": "line1",
              "machine_entity_id": "urn:ngsi-ld:Machine:line1-oven", "parameter": "zone1_setpoint", "value": 180.0,
              "previous_value": 220.0, "unit_code": "CEL", "mode": "approve", "status": "pending_approval",
              "reason": "zone 1 runs hot", "actor": None, "created_at": int(T0 * 1000),
              "updated_at": int(T0 * 1000), "expires_at": int((T0 + 600) * 1000), "readback_value": None, "error": None}
    item, _ = action_item(action)
    assert item.title == "Approval needed: line1-oven zone1_setpoint -> 180 °C"  # a symbol, never the unit code
    decision = eng.decide(state, item, T0 + 1)
    assert decision.status == "notify" and decision.escalation is not None
    assert action_item({**action, "status": "executing"}) == (None, "not_notified_status")
    done, _ = action_item({**action, "status": "approved"})
    assert done is None
    result, _ = action_item({**action, "status": "succeeded", "actor": "anna"})
    eng.decide(state, result, T0 + 60)
    assert state[f"esc:{item.notification_id}"]["closed"]
