"""MQTT topic + JSON payload -> readings and alarms, by configurable rules.

A rule matches an MQTT topic filter and says how to name the device and metric, from topic segments (`{1}` is the
first segment) or from payload fields. The first matching rule wins. Default rules (the simulator's emitter):

    plant/<line>/<machine>/alarms   -> an alarm   of device "<line>-<machine>"
    plant/<line>/<machine>/<metric> -> a reading  of device "<line>-<machine>", metric <metric>

Payloads are tolerated in several shapes: `{"value": 21.5, "unit": "Cel", "ts": "2026-...Z"}` (also `v`, `val`,
`timestamp`, `time`, `observed_at`; epoch s/ms/µs/ns), or a bare JSON number, string or boolean, or a gateway's
batch `{"device": .., "ts": .., "readings": [{"metric": .., "value": .., "unit": ..}, ...]}`. A `device` field in
the payload wins over the topic's. Alarms: `{"alarm"|"alarm_type"|"type"|"code", "state"|"action": raise|clear,
"severity", "message", "ts"}`.

Ids are deterministic per source reading: `mqtt:<device>:<metric>:<observed_at ms>` (a redelivered message maps to
the same id and is dropped as a duplicate). Without a timestamp in the payload, the receive time is the observed
time and the id gets a per-receipt suffix (nothing could tell a redelivery of such a message from a new one).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.ingest.parsing import (
    InputError,
    check_value,
    first_present,
    optional_str,
    parse_timestamp,
    required_str,
)
from services.ingest.pipeline import Emit, alarm, reading, source

VALUE_FIELDS = ("value", "v", "val")
UNIT_FIELDS = ("unit", "u", "units")
TIME_FIELDS = ("ts", "timestamp", "time", "observed_at", "t")
ALARM_TYPE_FIELDS = ("alarm", "alarm_type", "type", "code", "name")
ALARM_ACTION_FIELDS = ("state", "action", "event")
RAISE_WORDS = {"raise", "raised", "active", "set", "on", "alarm", "true", "1"}
CLEAR_WORDS = {"clear", "cleared", "inactive", "reset", "off", "normal", "false", "0"}
_TEMPLATE = re.compile(r"\{(\d+)\}")
MAX_PAYLOAD = 256 * 1024
MAX_BATCH = 1000


@dataclass(frozen=True)
class TopicRule:
    filter: str
    kind: str = "reading"  # reading | alarm
    device: str = "{2}-{3}"
    metric: str = "{4}"
    unit: str | None = None  # unit when the payload gives none

    def __post_init__(self) -> None:
        if self.kind not in ("reading", "alarm"):
            raise ValueError(f"rule {self.filter!r}: kind must be reading or alarm, got {self.kind!r}")
        levels = self.filter.split("/")
        if any(("#" in level and level != "#") or ("+" in level and level != "+") for level in levels) or \
                ("#" in levels and levels.index("#") != len(levels) - 1):
            raise ValueError(f"rule {self.filter!r}: not a valid MQTT topic filter")

    def matches(self, levels: list[str]) -> bool:
        pattern = self.filter.split("/")
        for i, want in enumerate(pattern):
            if want == "#":
                return True
            if i >= len(levels):
                return False
            if want != "+" and want != levels[i]:
                return False
        return len(levels) == len(pattern)


DEFAULT_RULES = (
    TopicRule("plant/+/+/alarms", kind="alarm"),
    TopicRule("plant/+/+/+", kind="reading"),
)


def load_rules(path: Path | None) -> tuple[TopicRule, ...]:
    """Rules from a YAML (or JSON) list of {filter, kind, device, metric, unit}; None -> the default rules."""
    if path is None:
        return DEFAULT_RULES
    raw = yaml.safe_load(Path(path).read_text())
    items = raw.get("rules") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a list of rules (or {{rules: [...]}})")
    rules = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "filter" not in item:
            raise ValueError(f"{path}: rule {index} needs at least a 'filter'")
        unknown = set(item) - {"filter", "kind", "device", "metric", "unit"}
        if unknown:
            raise ValueError(f"{path}: rule {index} has unknown keys {sorted(unknown)}")
        rules.append(TopicRule(**item))
    return tuple(rules)


def _fill(template: str, levels: list[str], what: str) -> str:
    def segment(match: re.Match) -> str:
        index = int(match.group(1))
        if not 1 <= index <= len(levels):
            raise InputError("topic", f"{what} template {template!r} needs topic segment {index}")
        return levels[index - 1]

    value = _TEMPLATE.sub(segment, template)
    if not value:
        raise InputError("topic", f"{what} is empty")
    return value


class MqttMapper:
    """Maps one MQTT message to records; raises InputError (with the field) for bad input."""

    def __init__(self, rules: tuple[TopicRule, ...] = DEFAULT_RULES, received_by: str | None = None,
                 protocol: str = "mqtt") -> None:
        self.rules = rules
        self.received_by = received_by
        self.protocol = protocol
        self._receipts = itertools.count(1)
        # topic -> (rule, levels, device from the topic, metric): a line has few topics, each seen often.
        self._topics: dict[str, tuple[TopicRule, list[str], str | None, str | None]] = {}

    def _resolve(self, topic: str) -> tuple[TopicRule, list[str], str | None, str | None]:
        cached = self._topics.get(topic)
        if cached is not None:
            return cached
        levels = topic.split("/")
        rule = next((r for r in self.rules if r.matches(levels)), None)
        if rule is None:
            raise InputError("topic", f"no mapping rule matches topic {topic[:200]!r}")
        try:
            device = _fill(rule.device, levels, "device")
        except InputError:
            device = None  # the payload must name it
        metric = _fill(rule.metric, levels, "metric") if rule.kind == "reading" else None
        resolved = (rule, levels, device, metric)
        if len(self._topics) < 10000:
            self._topics[topic] = resolved
        return resolved

    def map(self, topic: str, payload: bytes, received_at: int, position: str | None = None) -> Emit:
        """One message that carries one reading or alarm."""
        records = self.map_many(topic, payload, received_at, position)
        if len(records) != 1:
            raise InputError("readings", f"expected one reading, the message carries {len(records)}")
        return records[0]

    def map_many(self, topic: str, payload: bytes, received_at: int, position: str | None = None) -> list[Emit]:
        """Every record of one message: one reading or alarm, or a batch `{"readings": [...]}` (gateways send
        many readings per message; each item may name its own metric, and takes the batch's device and ts
        unless it has its own). A bad item rejects the whole message, naming the item."""
        rule, levels, device, metric = self._resolve(topic)
        if len(payload) > MAX_PAYLOAD:
            raise InputError("payload", f"payload of {len(payload)} bytes is larger than {MAX_PAYLOAD}")
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InputError("payload", f"not JSON: {exc}") from None
        if rule.kind == "reading" and isinstance(body, dict) and "readings" in body:
            return self._batch(rule, device, metric, topic, body, received_at, position)
        return [self._one(rule, device, metric, topic, body, received_at, position)]

    def _batch(self, rule: TopicRule, topic_device: str | None, topic_metric: str, topic: str, body: dict,
               received_at: int, position: str | None) -> list[Emit]:
        items = body["readings"]
        if not isinstance(items, list) or not items:
            raise InputError("readings", "expected a non-empty array of readings")
        if len(items) > MAX_BATCH:
            raise InputError("readings", f"at most {MAX_BATCH} readings per message")
        shared = {key: body[key] for key in ("device", *TIME_FIELDS) if key in body}
        out = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InputError(f"readings[{index}]", "expected an object")
            metric = topic_metric
            if "metric" in item:
                metric = required_str(item["metric"], f"readings[{index}].metric", 128)
            merged = {**shared, **item} if shared else item
            try:
                out.append(self._reading(rule, topic_device, metric, topic, merged, received_at,
                                         f"{position}:{index}" if position is not None else str(index)))
            except InputError as exc:
                raise InputError(f"readings[{index}].{exc.field}", exc.message) from None
        return out

    def _one(self, rule: TopicRule, device: str | None, metric: str | None, topic: str, body: Any,
             received_at: int, position: str | None) -> Emit:
        if rule.kind == "alarm":
            return self._alarm(rule, device, topic, body, received_at, position)
        return self._reading(rule, device, metric, topic, body, received_at, position)

    def _id(self, what: str, observed_at: int, stamped: bool) -> str:
        """Deterministic from the source's timestamp; without one, unique per receipt (two readings received in
        the same millisecond are still two readings, and nothing could recognise a redelivery anyway)."""
        if stamped:
            return f"{self.protocol}:{what}:{observed_at}"
        return f"{self.protocol}:{what}:{observed_at}:rx-{self.received_by}-{next(self._receipts)}"

    @staticmethod
    def _device(topic_device: str | None, body: Any) -> str:
        if isinstance(body, dict):
            named = body.get("device")
            if isinstance(named, str) and named.strip():
                return required_str(named, "device")
        if topic_device is None:
            raise InputError("device", "the topic names no device and the payload has no 'device' field")
        return topic_device

    def _reading(self, rule: TopicRule, topic_device: str | None, metric: str, topic: str, body: Any,
                 received_at: int, position: str | None) -> Emit:
        unit: str | None = rule.unit
        observed_at = received_at
        stamped = False  # did the source say when? Otherwise the id cannot be derived from the reading
        attributes: dict[str, str] = {}
        if isinstance(body, dict):
            name, raw_value = first_present(body, VALUE_FIELDS)
            if name is None:
                raise InputError("value", "the payload has no value (expected one of: value, v, val)")
            value = check_value(raw_value, name)
            unit_name, raw_unit = first_present(body, UNIT_FIELDS)
            if unit_name is not None:
                unit = optional_str(raw_unit, unit_name, 32) or unit
            ts_name, raw_ts = first_present(body, TIME_FIELDS)
            if ts_name is not None:
                observed_at = parse_timestamp(raw_ts, ts_name)
                stamped = True
            if "seq" in body and isinstance(body["seq"], int) and not isinstance(body["seq"], bool):
                attributes["seq"] = str(body["seq"])
            if "quality" in body and isinstance(body["quality"], str | int):
                attributes["quality"] = str(body["quality"])[:64]
        elif isinstance(body, list):
            raise InputError("payload", "expected a JSON object or a single value, got a list")
        else:
            value = check_value(body, "payload")
        device = self._device(topic_device, body)
        src = source(self.protocol, device, topic, position, self.received_by)
        return reading(id=self._id(f"{device}:{metric}", observed_at, stamped), device=device, metric=metric,
                       value=value, unit=unit, observed_at=observed_at, received_at=received_at, src=src,
                       attributes=attributes)

    def _alarm(self, rule: TopicRule, topic_device: str | None, topic: str, body: Any, received_at: int,
               position: str | None) -> Emit:
        if not isinstance(body, dict):
            raise InputError("payload", "an alarm must be a JSON object")
        type_name, raw_type = first_present(body, ALARM_TYPE_FIELDS)
        if type_name is None:
            raise InputError("alarm", "the alarm has no type (expected one of: alarm, alarm_type, type, code)")
        alarm_type = required_str(raw_type, type_name, 128)
        action_name, raw_action = first_present(body, ALARM_ACTION_FIELDS)
        if action_name is None and isinstance(body.get("active"), bool):
            action_name, raw_action = "active", body["active"]
        if action_name is None:
            raise InputError("state", "the alarm has no state (expected state or action: raise or clear)")
        word = str(raw_action).strip().lower() if isinstance(raw_action, str | bool | int) else ""
        if word in RAISE_WORDS:
            action = "raise"
        elif word in CLEAR_WORDS:
            action = "clear"
        else:
            raise InputError(action_name, f"expected raise or clear, got {str(raw_action)[:64]!r}")
        severity = optional_str(body.get("severity"), "severity", 32)
        message = optional_str(body.get("message"), "message", 2000)
        observed_at, stamped = received_at, False
        ts_name, raw_ts = first_present(body, TIME_FIELDS)
        if ts_name is not None:
            observed_at, stamped = parse_timestamp(raw_ts, ts_name), True
        device = self._device(topic_device, body)
        src = source(self.protocol, device, topic, position, self.received_by)
        return alarm(id=self._id(f"{device}:alarm:{alarm_type}:{action}", observed_at, stamped), device=device,
                     alarm_type=alarm_type, action=action, severity=severity.lower() if severity else None,
                     message=message, observed_at=observed_at, received_at=received_at, src=src)
