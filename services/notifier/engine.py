"""What to notify, to whom, and what not: pure decisions over a key-value state, with the clock passed in.

The state is a MutableMapping of JSON values: a Faust table in the service, a dict in unit tests. Values are only
ever replaced (`state[k] = new`), never mutated in place, because a table writes its changelog on assignment.

Keys (each written from one line's or one action's partition, so the table's changelog stays co-partitioned):
  alarm:<alarm id>        the alarm's last known state (one notification per state change, not per message)
  seen:<notification id>  this notification was decided already (a replay does not notify twice)
  fp:<fingerprint>        when this finding was last notified (deduplication window)
  cap:<line id>           send times within the line cap window (actions, keyed by action id, stay out of it)
  rcap:<group>            send times within the recipient cap window (a group that hears several lines sees
                          keys written from several partitions: after a restart its count is approximate)
  digest:<line>:<period>  items held back for the line's digest of that period
  esc:<root id>           an open escalation: what, when it started, its stages, closed or not
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lineguard.units import with_unit
from services.notifier.rules import Group, Rule, Rules, rank

State = MutableMapping[str, Any]

ACTION_SEVERITY = {"pending_approval": "major", "failed": "major", "denied": "minor", "expired": "minor",
                   "rejected": "info", "succeeded": "info"}
ACTION_TITLE = {"pending_approval": "Approval needed", "failed": "Action failed", "denied": "Action denied by policy",
                "expired": "Approval expired", "rejected": "Action rejected", "succeeded": "Action done"}
MAX_DIGEST_ITEMS = 50


def short_hash(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


@dataclass
class Item:
    """One thing that may become a notification."""

    kind: str  # alarm, recommendation, action
    notification_id: str  # deterministic: a replay yields the same id
    line_id: str
    severity: str
    category: str
    title: str
    summary: str
    event_ms: int
    fingerprint: str
    transition: str  # raised, severity_changed, cleared, new, or the action's status
    recommendation_id: str | None = None
    alarm_id: str | None = None
    action_id: str | None = None
    expires_at_ms: int | None = None
    steps: list[str] = field(default_factory=list)
    opens_escalation: bool = False
    closes: str | None = None  # the root notification whose escalation this ends

    @property
    def subject(self) -> str:
        """What a vote on this notification is about (feedback.v1's recommendation_id)."""
        if self.recommendation_id:
            return self.recommendation_id
        return f"alarm:{self.alarm_id}" if self.alarm_id else f"action:{self.action_id}"


@dataclass
class Decision:
    status: str  # notify, digest, suppressed
    reason: str | None = None
    groups: list[str] = field(default_factory=list)
    rule: str | None = None
    escalation: dict | None = None  # the entry to store under esc:<root>


# --- items from records ----------------------------------------------------------------------------------------


def alarm_item(state: State, rec: dict) -> tuple[Item | None, str | None]:
    """The notification an alarm record means, or (None, why not): one per state change, not per message."""
    alarm_id = rec["alarm_id"]
    key = f"alarm:{alarm_id}"
    prev = state.get(key)
    activation = f"{alarm_id}@{rec['raised_at']}"
    root = f"alarm-{short_hash(activation)}"
    severity = rec["severity"]
    active = rec["state"] == "active"
    new_state = {"activation": activation, "state": rec["state"], "severity": severity,
                 "raise_count": rec.get("raise_count", 1), "updated_at": rec["updated_at"],
                 "notified": prev.get("notified", False) if prev and prev.get("activation") == activation else False}
    same_activation = prev is not None and prev.get("activation") == activation
    if active:
        if same_activation and prev["state"] == "active" and prev["severity"] == severity:
            state[key] = new_state
            return None, "no_state_change"
        if same_activation and prev["state"] == "cleared":
            state[key] = {**new_state, "state": "cleared"}
            return None, "no_state_change"  # a late raise of an activation that already cleared
        transition = "severity_changed" if same_activation else "raised"
        nid = root if transition == "raised" else f"{root}-{severity}"
    else:
        if same_activation and prev["state"] == "cleared":
            state[key] = new_state
            return None, "no_state_change"
        if not new_state["notified"]:  # nobody heard of the raise (held back, or before our time): no news
            state[key] = new_state
            return None, "clear_not_notified"
        transition = "cleared"
        nid = f"{root}-cleared"
    state[key] = new_state
    entity = rec["entity_id"].rsplit(":", 1)[-1]
    verb = {"raised": "raised", "severity_changed": f"now {severity}", "cleared": "cleared"}[transition]
    title = f"{severity.upper()} {rec['alarm_type']} on {entity}: {verb}"
    item = Item(kind="alarm", notification_id=nid, line_id=rec["line_id"], severity=severity,
                category=rec["alarm_type"], title=title, summary=rec.get("message") or title,
                event_ms=rec["updated_at"], fingerprint=f"alarm|{rec['line_id']}|{rec['entity_id']}|{rec['alarm_type']}",
                transition=transition, alarm_id=alarm_id,
                opens_escalation=transition == "raised", closes=root if transition == "cleared" else None)
    return item, None


def recommendation_item(rec: dict) -> Item:
    root_entity = (rec.get("root_cause") or {}).get("entity_id") or ""
    return Item(kind="recommendation", notification_id=f"rec-{short_hash(rec['id'])}", line_id=rec["line_id"],
                severity=rec["severity"], category=rec["category"], title=rec["title"], summary=rec["summary"],
                event_ms=rec["created_at"],
                fingerprint=f"rec|{rec['line_id']}|{rec['category']}|{root_entity}|{rec['title']}",
                transition="new", recommendation_id=rec["id"], steps=list(rec.get("steps") or []),
                opens_escalation=True)


def action_item(rec: dict) -> tuple[Item | None, str | None]:
    status = rec["status"]
    if status not in ACTION_SEVERITY:
        return None, "not_notified_status"  # requested, approved, executing: the result follows
    machine = rec["machine_entity_id"].rsplit(":", 1)[-1]
    title = f"{ACTION_TITLE[status]}: {machine} {rec['parameter']} -> {with_unit(rec['value'], rec.get('unit_code'))}"
    parts = [rec.get("reason") or "", f"by {rec['actor']}" if rec.get("actor") else "",
             f"error: {rec['error']}" if rec.get("error") else ""]
    pending_root = f"action-{short_hash(rec['action_id'], 'pending_approval')}"
    return Item(kind="action", notification_id=f"action-{short_hash(rec['action_id'], status)}",
                line_id=rec["line_id"], severity=ACTION_SEVERITY[status], category=status, title=title,
                summary="; ".join(p for p in parts if p) or title, event_ms=rec["updated_at"],
                fingerprint=f"action|{rec['action_id']}|{status}", transition=status,
                recommendation_id=rec.get("recommendation_id"), action_id=rec["action_id"],
                expires_at_ms=rec.get("expires_at") if status == "pending_approval" else None,
                opens_escalation=status == "pending_approval",
                closes=None if status == "pending_approval" else pending_root), None


# --- decisions -------------------------------------------------------------------------------------------------


def _window(times: list[float] | None, now: float, span: float) -> list[float]:
    return [t for t in times or () if now - t < span]


class Engine:
    """Noise control and routing. `started_at` is when the service started (the start-up grace period)."""

    def __init__(self, rules: Rules, started_at: float) -> None:
        self.rules = rules
        self.started_at = started_at

    def decide(self, state: State, item: Item, now: float) -> Decision:
        limits = self.rules.limits
        if state.get(f"seen:{item.notification_id}") is not None:
            return Decision("suppressed", "duplicate")
        if now - item.event_ms / 1000.0 > limits.max_event_age_s:
            return Decision("suppressed", "stale")
        fp_key = f"fp:{short_hash(item.fingerprint)}"
        last = state.get(fp_key)
        if item.transition in ("raised", "new") and last is not None and now - last < limits.dedup_window_s:
            return Decision("suppressed", "duplicate")
        rule = self.rules.first_match(item.line_id, item.kind, item.severity, item.category)
        if rule is None:
            return Decision("suppressed", "no_rule")
        names = list(rule.notify)
        needs_answer = item.kind == "action" and item.transition == "pending_approval"
        hold: str | None = None
        if rule.digest:
            hold = "digest_rule"
        elif rank(item.severity) < rank(limits.digest_below) and not needs_answer:
            hold = "below_threshold"
        elif rule.quiet_hours is not None and rule.quiet_hours.active(now) \
                and rank(item.severity) < rank(rule.quiet_hours.min_severity) and not needs_answer:
            hold = "quiet_hours"
        elif now - self.started_at < limits.startup_grace_s and item.severity != "critical" and not needs_answer:
            hold = "startup_grace"
        if hold is None and item.kind != "action":
            sent = _window(state.get(f"cap:{item.line_id}"), now, limits.line_cap_window_s)
            if len(sent) >= limits.line_cap:
                hold = "line_cap"
        if hold is not None:
            self._hold(state, item, names, hold, now)
            return Decision("digest", hold, names, rule.name)
        groups = self.rules.resolve(names, now)
        if item.kind != "action":
            groups = self._under_recipient_cap(state, groups, now)
        if not groups:
            self._hold(state, item, names, "recipient_cap", now)
            return Decision("digest", "recipient_cap", names, rule.name)
        # Notify: remember it (replays and repeats are recognised), count it against the caps.
        state[f"seen:{item.notification_id}"] = now
        if item.alarm_id and item.transition != "cleared":
            alarm = state.get(f"alarm:{item.alarm_id}")
            if alarm is not None:
                state[f"alarm:{item.alarm_id}"] = {**alarm, "notified": True}
        state[fp_key] = now
        if item.kind != "action":  # actions are keyed by action id, not line: they stay out of the line caps
            sent = _window(state.get(f"cap:{item.line_id}"), now, limits.line_cap_window_s)
            state[f"cap:{item.line_id}"] = [*sent, now]
            for g in groups:
                key = f"rcap:{g.name}"
                state[key] = [*_window(state.get(key), now, limits.recipient_cap_window_s), now]
        escalation = None
        if item.opens_escalation and rule.escalation is not None and (item.severity == "critical" or needs_answer):
            escalation = self._open(state, item, rule, now)
        if item.closes:
            self.close(state, item.closes, f"{item.kind} {item.transition}", now)
        return Decision("notify", None, [g.name for g in groups], rule.name, escalation)

    def _under_recipient_cap(self, state: State, groups: list[Group], now: float) -> list[Group]:
        limits = self.rules.limits
        return [g for g in groups
                if len(_window(state.get(f"rcap:{g.name}"), now, limits.recipient_cap_window_s)) < limits.recipient_cap]

    def period(self, now: float) -> int:
        return int(now // self.rules.limits.digest_interval_s)

    def _hold(self, state: State, item: Item, names: list[str], reason: str, now: float) -> None:
        """Into the line's digest for the current period (counted there by reason)."""
        if item.closes:  # a clear held back still ends the escalation
            self.close(state, item.closes, f"{item.kind} {item.transition}", now)
        key = f"digest:{item.line_id}:{self.period(now)}"
        entry = state.get(key) or {"line_id": item.line_id, "period": self.period(now), "count": 0,
                                   "by_reason": {}, "items": [], "groups": []}
        items = entry["items"]
        if len(items) < MAX_DIGEST_ITEMS:
            items = [*items, {"title": item.title, "severity": item.severity, "kind": item.kind,
                              "at": item.event_ms}]
        by_reason = dict(entry["by_reason"])
        by_reason[reason] = by_reason.get(reason, 0) + 1
        groups = sorted(set(entry["groups"]) | set(names))
        state[key] = {**entry, "count": entry["count"] + 1, "by_reason": by_reason, "items": items,
                      "groups": groups}

    # --- escalation ----------------------------------------------------------------------------------------

    def _open(self, state: State, item: Item, rule: Rule, now: float) -> dict:
        esc = rule.escalation
        assert esc is not None
        entry = {"root": item.notification_id, "item": asdict(item), "created_at": now, "rule": rule.name,
                 "notify": list(rule.notify),
                 "stages": [[s.after_s, list(s.notify)] for s in esc.stages],
                 "remind_every_s": esc.remind_every_s, "max_reminders": esc.max_reminders, "closed": None}
        state[f"esc:{item.notification_id}"] = entry
        return entry

    @staticmethod
    def close(state: State, root: str, why: str, now: float) -> None:
        key = f"esc:{root}"
        entry = state.get(key)
        if entry is not None and not entry.get("closed"):
            state[key] = {**entry, "closed": why, "closed_at": now}


def step_due_at(entry: dict, step: int) -> float | None:
    """When escalation step `step` (0-based: stages, then reminders) is due; None when there is no such step."""
    stages = entry["stages"]
    if step < len(stages):
        return entry["created_at"] + stages[step][0]
    every = entry.get("remind_every_s")
    reminder = step - len(stages) + 1
    if not every or reminder > entry.get("max_reminders", 0):
        return None
    last = stages[-1][0] if stages else 0.0
    return entry["created_at"] + last + reminder * every


def step_recipients(entry: dict, step: int) -> list[str]:
    stages = entry["stages"]
    if step < len(stages):
        return list(stages[step][1])
    # Reminders: everybody who has been told so far.
    names = list(entry["notify"])
    for _, stage in stages:
        names.extend(n for n in stage if n not in names)
    return names


def due_escalations(entries: list[dict], done: Callable[[str], int], acked: Callable[[str], bool],
                    now: float) -> list[tuple[dict, int]]:
    """(entry, step) for every open escalation whose next step is due at `now`; `done(root)` says how many steps
    were already sent, `acked(root)` whether someone acknowledged."""
    out = []
    for entry in entries:
        root = entry["root"]
        if entry.get("closed") or acked(root):
            continue
        step = done(root)
        due = step_due_at(entry, step)
        if due is not None and now >= due:
            out.append((entry, step))
    return out


def due_digests(entries: list[dict], current_period: int, sent: Callable[[str], bool]) -> list[dict]:
    """Digests of periods that ended and were not sent yet."""
    return [e for e in entries if e["period"] < current_period and e["count"] > 0
            and not sent(digest_id(e["line_id"], e["period"]))]


def digest_id(line_id: str, period: int) -> str:
    return f"digest-{short_hash(line_id, period)}"
