"""Routing rules (`notify-rules.yaml`): who hears what, on which channels, when, and who is next if nobody answers.

Validation errors name the file, the YAML line and the field, like the plant model's. Rules are tried in order and
the first whose `match` fits decides the recipients (groups, or on-call groups resolved by the shift at that
moment), quiet hours and escalation stages. Noise limits (dedup window, caps, digest, grace) are global.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from lineguard.plant import LineNumberLoader, PlantModelError, YamlChecker

SEVERITIES = ("critical", "major", "minor", "warning", "info", "indeterminate")
RANK = {"critical": 5, "major": 4, "minor": 3, "warning": 2, "info": 1, "indeterminate": 1}
KINDS = ("alarm", "recommendation", "action")
CHANNEL_TYPES = ("console", "log", "webhook", "sns", "email")
WEBHOOK_FORMATS = ("slack", "teams", "json")


class RulesError(ValueError):
    """The rules file is invalid; the message names the file, line and field."""


def rank(severity: str) -> int:
    return RANK.get(severity, 0)


@dataclass(frozen=True)
class Channel:
    name: str
    type: str
    format: str = "json"  # webhooks: slack, teams or json
    topic_arn: str | None = None  # sns


@dataclass(frozen=True)
class Member:
    name: str
    email: str | None = None


@dataclass(frozen=True)
class Group:
    name: str
    channels: tuple[str, ...]
    members: tuple[Member, ...] = ()


@dataclass(frozen=True)
class Shift:
    name: str
    start: dt.time
    end: dt.time
    group: str

    def covers(self, t: dt.time) -> bool:
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # across midnight


@dataclass(frozen=True)
class OnCall:
    name: str
    timezone: ZoneInfo
    shifts: tuple[Shift, ...]

    def group_at(self, now: float) -> str | None:
        local = dt.datetime.fromtimestamp(now, self.timezone).time()
        return next((s.group for s in self.shifts if s.covers(local)), None)


@dataclass(frozen=True)
class QuietHours:
    start: dt.time
    end: dt.time
    timezone: ZoneInfo
    min_severity: str  # at or above it still goes out at once; below it waits for the digest

    def active(self, now: float) -> bool:
        local = dt.datetime.fromtimestamp(now, self.timezone).time()
        return Shift("", self.start, self.end, "").covers(local)


@dataclass(frozen=True)
class Stage:
    after_s: float
    notify: tuple[str, ...]


@dataclass(frozen=True)
class Escalation:
    stages: tuple[Stage, ...]
    remind_every_s: float | None = None
    max_reminders: int = 10


@dataclass(frozen=True)
class Match:
    lines: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    def fits(self, line_id: str, kind: str, severity: str, category: str) -> bool:
        return ((not self.lines or line_id in self.lines) and (not self.kinds or kind in self.kinds)
                and (not self.severities or severity in self.severities)
                and (not self.categories or category in self.categories))


@dataclass(frozen=True)
class Rule:
    name: str
    match: Match
    notify: tuple[str, ...]
    quiet_hours: QuietHours | None = None
    escalation: Escalation | None = None
    digest: bool = False  # everything this rule matches goes into the digest


@dataclass(frozen=True)
class Limits:
    dedup_window_s: float = 600.0
    line_cap: int = 6
    line_cap_window_s: float = 60.0
    recipient_cap: int = 20
    recipient_cap_window_s: float = 3600.0
    digest_below: str = "major"
    digest_interval_s: float = 900.0
    startup_grace_s: float = 30.0
    max_event_age_s: float = 900.0


@dataclass(frozen=True)
class Rules:
    limits: Limits
    channels: dict[str, Channel]
    groups: dict[str, Group]
    on_call: dict[str, OnCall]
    rules: tuple[Rule, ...]
    source: str = ""
    webhook_names: frozenset[str] = field(default_factory=frozenset)

    def first_match(self, line_id: str, kind: str, severity: str, category: str) -> Rule | None:
        return next((r for r in self.rules if r.match.fits(line_id, kind, severity, category)), None)

    def resolve(self, names: tuple[str, ...] | list[str], now: float) -> list[Group]:
        """Recipient names (groups or on-call groups) -> the groups they mean at `now`, each once."""
        out: dict[str, Group] = {}
        for name in names:
            if name in self.on_call:
                current = self.on_call[name].group_at(now)
                if current:
                    out.setdefault(current, self.groups[current])
            elif name in self.groups:
                out.setdefault(name, self.groups[name])
        return list(out.values())

    def targets(self, group_names: list[str]) -> list[tuple[str, str, str]]:
        """(channel, target, operator) for these groups, each target once even when groups overlap: the console
        and the log once, a webhook or SNS topic once, an e-mail address once."""
        out: dict[tuple[str, str], str] = {}
        for name in group_names:
            group = self.groups.get(name)
            if group is None:
                continue
            for ch_name in group.channels:
                ch = self.channels[ch_name]
                if ch.type in ("console", "log", "webhook"):
                    out.setdefault((ch_name, ch_name), name)
                elif ch.type == "sns":
                    out.setdefault((ch_name, ch.topic_arn or ch_name), name)
                elif ch.type == "email":
                    for m in group.members:
                        if m.email:
                            out.setdefault((ch_name, m.email), m.name)
        return [(ch, target, op) for (ch, target), op in out.items()]


# --- loading ---------------------------------------------------------------------------------------------------


class _RulesChecker(YamlChecker):
    def fail(self, node: Any, path: str, why: str) -> RulesError:  # type: ignore[override]
        line = getattr(node, "line", 0)
        where = f"{self.source}:{line}" if line else self.source
        return RulesError(f"{where}: {path}: {why}")

    def strings(self, node: Any, key: str, path: str, allowed: tuple[str, ...] | None = None,
                required: bool = False) -> tuple[str, ...]:
        raw = self.get(node, key, path, list, required=required, default=[])
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                raise self.fail(node, f"{path}.{key}[{i}]", f"expected a string, got {item!r}")
            if allowed is not None and item not in allowed:
                raise self.fail(node, f"{path}.{key}[{i}]", f"{item!r} is not one of {', '.join(allowed)}")
        return tuple(raw)

    def clock(self, node: Any, key: str, path: str) -> dt.time:
        raw = self.get(node, key, path, str)
        try:
            return dt.time.fromisoformat(raw)
        except ValueError:
            raise self.fail(node, f"{path}.{key}", f"expected HH:MM, got {raw!r}") from None

    def zone(self, node: Any, key: str, path: str, default: str) -> ZoneInfo:
        raw = self.get(node, key, path, str, required=False, default=default)
        try:
            return ZoneInfo(raw)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail(node, f"{path}.{key}", f"unknown time zone {raw!r}") from None

    def seconds(self, node: Any, key: str, path: str, default: float | None = None, positive: bool = True) -> Any:
        value = self.get(node, key, path, float, required=default is None, default=default)
        if value is not None and (value <= 0 if positive else value < 0):
            raise self.fail(node, f"{path}.{key}", f"expected {'> 0' if positive else '>= 0'}, got {value}")
        return value

    def count(self, node: Any, key: str, path: str, default: int) -> int:
        value = self.get(node, key, path, int, required=False, default=default)
        if isinstance(value, bool) or value < 1:
            raise self.fail(node, f"{path}.{key}", f"expected a positive integer, got {value!r}")
        return value


def load_rules(path: str | Path) -> Rules:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the notification rules: {exc.strerror}") from exc
    return parse_rules(text, source=str(path))


def parse_rules(text: str, source: str = "notify-rules.yaml") -> Rules:
    try:
        doc = yaml.load(text, Loader=LineNumberLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML: {exc}") from None
    c = _RulesChecker(source)
    if not isinstance(doc, dict):
        raise RulesError(f"{source}: expected a mapping at the top")
    try:
        return _parse(doc, c, source)
    except PlantModelError as exc:  # from the shared checker's get()
        raise RulesError(str(exc)) from None


def _parse(doc: dict, c: _RulesChecker, source: str) -> Rules:
    d = c.get(doc, "defaults", "defaults", dict, required=False, default={})
    base = Limits()
    limits = Limits(
        dedup_window_s=c.seconds(d, "dedup_window_s", "defaults", base.dedup_window_s),
        line_cap=c.count(d, "line_cap", "defaults", base.line_cap),
        line_cap_window_s=c.seconds(d, "line_cap_window_s", "defaults", base.line_cap_window_s),
        recipient_cap=c.count(d, "recipient_cap", "defaults", base.recipient_cap),
        recipient_cap_window_s=c.seconds(d, "recipient_cap_window_s", "defaults", base.recipient_cap_window_s),
        digest_below=c.get(d, "digest_below", "defaults", str, required=False, default=base.digest_below),
        digest_interval_s=c.seconds(d, "digest_interval_s", "defaults", base.digest_interval_s),
        startup_grace_s=c.seconds(d, "startup_grace_s", "defaults", base.startup_grace_s, positive=False),
        max_event_age_s=c.seconds(d, "max_event_age_s", "defaults", base.max_event_age_s),
    )
    if limits.digest_below not in SEVERITIES:
        raise c.fail(d, "defaults.digest_below", f"{limits.digest_below!r} is not one of {', '.join(SEVERITIES)}")

    channels: dict[str, Channel] = {}
    raw_channels = c.get(doc, "channels", "channels", dict)
    for name, raw in raw_channels.items():
        path = f"channels.{name}"
        kind = c.get(raw, "type", path, str)
        if kind not in CHANNEL_TYPES:
            raise c.fail(raw, f"{path}.type", f"{kind!r} is not one of {', '.join(CHANNEL_TYPES)}")
        fmt = c.get(raw, "format", path, str, required=False, default="json")
        if kind == "webhook" and fmt not in WEBHOOK_FORMATS:
            raise c.fail(raw, f"{path}.format", f"{fmt!r} is not one of {', '.join(WEBHOOK_FORMATS)}")
        arn = c.get(raw, "topic_arn", path, str, required=kind == "sns")
        if arn is not None and not arn.startswith("arn:"):
            raise c.fail(raw, f"{path}.topic_arn", f"expected an SNS topic ARN, got {arn!r}")
        channels[name] = Channel(name, kind, fmt, arn)

    groups: dict[str, Group] = {}
    for name, raw in c.get(doc, "groups", "groups", dict).items():
        path = f"groups.{name}"
        names = c.strings(raw, "channels", path, tuple(channels), required=True)
        members = []
        for i, m in enumerate(c.get(raw, "members", path, list, required=False, default=[])):
            mpath = f"{path}.members[{i}]"
            member = Member(c.get(m, "name", mpath, str), c.get(m, "email", mpath, str, required=False))
            if member.email is not None and "@" not in member.email:
                raise c.fail(m, f"{mpath}.email", f"not an e-mail address: {member.email!r}")
            members.append(member)
        if any(channels[n].type == "email" for n in names) and not any(m.email for m in members):
            raise c.fail(raw, f"{path}.members", "an e-mail channel needs members with an email")
        groups[name] = Group(name, names, tuple(members))

    on_call: dict[str, OnCall] = {}
    for name, raw in c.get(doc, "on_call", "on_call", dict, required=False, default={}).items():
        path = f"on_call.{name}"
        if name in groups:
            raise c.fail(raw, path, "an on-call name must differ from every group name")
        zone = c.zone(raw, "timezone", path, "UTC")
        shifts = []
        for i, s in enumerate(c.get(raw, "shifts", path, list)):
            spath = f"{path}.shifts[{i}]"
            group = c.get(s, "group", spath, str)
            if group not in groups:
                raise c.fail(s, f"{spath}.group", f"unknown group {group!r}")
            shifts.append(Shift(c.get(s, "name", spath, str), c.clock(s, "start", spath), c.clock(s, "end", spath),
                                group))
        on_call[name] = OnCall(name, zone, tuple(shifts))

    recipients = tuple(groups) + tuple(on_call)
    rules = []
    for i, raw in enumerate(c.get(doc, "rules", "rules", list)):
        path = f"rules[{i}]"
        name = c.get(raw, "name", path, str)
        m = c.get(raw, "match", path, dict, required=False, default={})
        match = Match(c.strings(m, "lines", f"{path}.match"), c.strings(m, "kinds", f"{path}.match", KINDS),
                      c.strings(m, "severities", f"{path}.match", SEVERITIES),
                      c.strings(m, "categories", f"{path}.match"))
        notify = c.strings(raw, "notify", path, recipients, required=True)
        quiet = None
        q = c.get(raw, "quiet_hours", path, dict, required=False)
        if q is not None:
            qpath = f"{path}.quiet_hours"
            min_sev = c.get(q, "min_severity", qpath, str, required=False, default="critical")
            if min_sev not in SEVERITIES:
                raise c.fail(q, f"{qpath}.min_severity", f"{min_sev!r} is not one of {', '.join(SEVERITIES)}")
            quiet = QuietHours(c.clock(q, "start", qpath), c.clock(q, "end", qpath), c.zone(q, "timezone", qpath, "UTC"),
                               min_sev)
        escalation = None
        e = c.get(raw, "escalation", path, dict, required=False)
        if e is not None:
            epath = f"{path}.escalation"
            stages = []
            last = 0.0
            for j, s in enumerate(c.get(e, "stages", epath, list)):
                spath = f"{epath}.stages[{j}]"
                after = c.seconds(s, "after_s", spath)
                if after <= last:
                    raise c.fail(s, f"{spath}.after_s", f"stages must come later and later ({after} <= {last})")
                last = after
                stages.append(Stage(after, c.strings(s, "notify", spath, recipients, required=True)))
            escalation = Escalation(tuple(stages), c.seconds(e, "remind_every_s", epath, None)
                                    if e.get("remind_every_s") is not None else None,
                                    c.count(e, "max_reminders", epath, 10))
        rules.append(Rule(name, match, notify, quiet, escalation,
                          bool(c.get(raw, "digest", path, bool, required=False, default=False))))
    webhooks = frozenset(n for n, ch in channels.items() if ch.type == "webhook")
    return Rules(limits, channels, groups, on_call, tuple(rules), source, webhooks)
