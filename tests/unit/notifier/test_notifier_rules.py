"""Routing rules: the shipped file loads; errors name the file line and the field; on-call shifts; targets."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from services.notifier.rules import RulesError, load_rules, parse_rules

RULES = Path(__file__).resolve().parents[3] / "examples" / "cookie-line" / "notify-rules.yaml"

MINIMAL = """
channels:
  console: {type: console}
  mail: {type: email}
groups:
  ops: {channels: [console]}
  leads: {channels: [console, mail], members: [{name: a, email: a@x.example}]}
rules:
  - name: all
    notify: [ops]
"""


def ts(hour: int, minute: int = 0, tz: str = "Europe/Berlin") -> float:
    from zoneinfo import ZoneInfo

    return dt.datetime(2026, 3, 10, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


def test_the_shipped_rules_load() -> None:
    rules = load_rules(RULES)
    assert rules.limits.line_cap == 6
    assert rules.first_match("line1", "alarm", "critical", "OVERTEMP").name == "critical alarms and recommendations"
    assert rules.first_match("line1", "action", "major", "pending_approval").name == "actions waiting for approval"
    assert rules.first_match("line1", "recommendation", "minor", "quality").quiet_hours is not None
    assert rules.first_match("line2", "recommendation", "minor", "quality") is None


def test_on_call_resolves_by_shift_in_the_plant_time_zone() -> None:
    rules = load_rules(RULES)
    assert [g.name for g in rules.resolve(["line1-on-call"], ts(7))] == ["line1-early"]
    assert [g.name for g in rules.resolve(["line1-on-call"], ts(15))] == ["line1-late"]
    assert [g.name for g in rules.resolve(["line1-on-call"], ts(23, 30))] == ["line1-night"]
    assert [g.name for g in rules.resolve(["line1-on-call"], ts(3))] == ["line1-night"]


def test_targets_are_deduplicated_across_groups() -> None:
    rules = load_rules(RULES)
    targets = rules.targets(["line1-early", "line1-operators", "shift-leads"])
    pairs = [(ch, t) for ch, t, _ in targets]
    assert len(pairs) == len(set(pairs))
    assert ("console", "console") in pairs and ("ops-chat", "ops-chat") in pairs
    assert ("mail", "anna@bakery.example") in pairs and ("mail", "carla@bakery.example") in pairs
    ops = {t: op for ch, t, op in targets}
    assert ops["anna@bakery.example"] == "anna"  # e-mail links are made for the person


def test_quiet_hours_span_midnight() -> None:
    rules = load_rules(RULES)
    quiet = rules.first_match("line1", "recommendation", "minor", "quality").quiet_hours
    assert quiet.active(ts(23)) and quiet.active(ts(5)) and not quiet.active(ts(12))


@pytest.mark.parametrize(("change", "expected"), [
    (("notify: [ops]", "notify: [nobody]"), ":9: rules[0].notify[0]: 'nobody' is not one of"),
    (("- name: all", "- name: all\n    match: {severities: [urgent]}"), ":10: rules[0].match.severities[0]: 'urgent'"),
    (("ops: {channels: [console]}", "ops: {channels: [pager]}"), ":6: groups.ops.channels[0]: 'pager'"),
    (("mail: {type: email}", "mail: {type: pigeon}"), ":4: channels.mail.type: 'pigeon' is not one of"),
    (("members: [{name: a, email: a@x.example}]", "members: [{name: a}]"),
     ":7: groups.leads.members: an e-mail channel needs members with an email"),
    (("    notify: [ops]", "    notify: [ops]\n    quiet_hours: {start: '25:00', end: '06:00'}"),
     ":11: rules[0].quiet_hours.start: expected HH:MM, got '25:00'"),
])
def test_errors_name_the_line_and_the_field(change: tuple[str, str], expected: str) -> None:
    text = MINIMAL.replace(*change)
    with pytest.raises(RulesError) as err:
        parse_rules(text, source="rules.yaml")
    assert str(err.value).startswith("rules.yaml:")
    assert expected in str(err.value), str(err.value)


def test_escalation_stages_must_come_later_and_later() -> None:
    text = MINIMAL.replace("    notify: [ops]", "    notify: [ops]\n    escalation:\n      stages:\n"
                           "        - {after_s: 60, notify: [leads]}\n        - {after_s: 30, notify: [ops]}")
    with pytest.raises(RulesError, match=r"rules\[0\]\.escalation\.stages\[1\]\.after_s: stages must come later"):
        parse_rules(text, source="rules.yaml")
