"""HTTP push: a JSON batch of readings and alarms from other plant systems (MES, historians, CMMS).

The published JSON schema is `push.schema.json` next to this file (served at GET /ingest/v1/schema). A batch is
validated as a whole before anything is produced: one wrong field rejects the batch with 400 and the field's
path (`readings[3].value`), so the caller fixes it and sends it again; nothing of a rejected batch reaches Kafka.

Ids: `http:<source>:<item id>` when the item carries an `id`, else `http:<source>:<device>:<metric>:<observed_at>`
(alarms: `...:<device>:alarm:<alarm_type>:<action>:<observed_at>`), so a batch sent again is dropped as duplicates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from services.ingest.parsing import InputError, check_value, optional_str, parse_timestamp, required_str
from services.ingest.pipeline import Emit, alarm, reading, source

SCHEMA_PATH = Path(__file__).with_name("push.schema.json")
PATH = "/ingest/v1/batch"
MAX_ITEMS = 10000
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
READING_FIELDS = {"id", "device", "metric", "value", "unit", "observed_at", "attributes"}
ALARM_FIELDS = {"id", "device", "alarm_type", "action", "severity", "message", "observed_at"}
SEVERITIES = {"critical", "major", "minor", "warning", "indeterminate"}


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _object(raw: Any, field: str) -> dict:
    if not isinstance(raw, dict):
        raise InputError(field, f"expected an object, got {type(raw).__name__}")
    return raw


def _no_unknown(item: dict, allowed: set[str], field: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise InputError(f"{field}.{unknown[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def parse_batch(body: bytes, received_at: int, received_by: str | None) -> list[Emit]:
    """The records of one batch, or InputError naming the first wrong field."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError("body", f"not JSON: {exc}") from None
    data = _object(data, "body")
    _no_unknown(data, {"source", "readings", "alarms"}, "body")
    source_name = required_str(data.get("source"), "source", 128)
    if not _SOURCE_NAME.match(source_name):
        raise InputError("source", "letters, digits and . _ : - only, starting with a letter or digit")
    readings = data.get("readings", [])
    alarms = data.get("alarms", [])
    if not isinstance(readings, list):
        raise InputError("readings", "expected an array")
    if not isinstance(alarms, list):
        raise InputError("alarms", "expected an array")
    if not readings and not alarms:
        raise InputError("readings", "the batch holds no readings and no alarms")
    if len(readings) + len(alarms) > MAX_ITEMS:
        raise InputError("readings", f"at most {MAX_ITEMS} readings and alarms per batch")
    out: list[Emit] = []
    for index, raw in enumerate(readings):
        field = f"readings[{index}]"
        item = _object(raw, field)
        _no_unknown(item, READING_FIELDS, field)
        device = required_str(item.get("device"), f"{field}.device", 128)
        metric = required_str(item.get("metric"), f"{field}.metric", 128)
        if "value" not in item:
            raise InputError(f"{field}.value", "required (a number, string, boolean or null)")
        value = check_value(item["value"], f"{field}.value")
        unit = optional_str(item.get("unit"), f"{field}.unit", 32)
        if "observed_at" not in item:
            raise InputError(f"{field}.observed_at", "required (ISO 8601 or epoch milliseconds)")
        observed_at = parse_timestamp(item["observed_at"], f"{field}.observed_at")
        attributes = item.get("attributes", {})
        if not isinstance(attributes, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in attributes.items()):
            raise InputError(f"{field}.attributes", "expected an object of string values")
        item_id = optional_str(item.get("id"), f"{field}.id", 200)
        rid = f"http:{source_name}:{item_id}" if item_id else f"http:{source_name}:{device}:{metric}:{observed_at}"
        out.append(reading(id=rid, device=device, metric=metric, value=value, unit=unit, observed_at=observed_at,
                           received_at=received_at, src=source("http", source_name, PATH, str(index), received_by),
                           attributes=dict(attributes)))
    for index, raw in enumerate(alarms):
        field = f"alarms[{index}]"
        item = _object(raw, field)
        _no_unknown(item, ALARM_FIELDS, field)
        device = required_str(item.get("device"), f"{field}.device", 128)
        alarm_type = required_str(item.get("alarm_type"), f"{field}.alarm_type", 128)
        action = item.get("action")
        if action not in ("raise", "clear"):
            raise InputError(f"{field}.action", f"expected raise or clear, got {str(action)[:40]!r}")
        severity = optional_str(item.get("severity"), f"{field}.severity", 32)
        if severity is not None and severity not in SEVERITIES:
            raise InputError(f"{field}.severity", f"expected one of {', '.join(sorted(SEVERITIES))}")
        message = optional_str(item.get("message"), f"{field}.message", 2000)
        if "observed_at" not in item:
            raise InputError(f"{field}.observed_at", "required (ISO 8601 or epoch milliseconds)")
        observed_at = parse_timestamp(item["observed_at"], f"{field}.observed_at")
        item_id = optional_str(item.get("id"), f"{field}.id", 200)
        rid = f"http:{source_name}:{item_id}" if item_id else \
            f"http:{source_name}:{device}:alarm:{alarm_type}:{action}:{observed_at}"
        out.append(alarm(id=rid, device=device, alarm_type=alarm_type, action=action, severity=severity,
                         message=message, observed_at=observed_at, received_at=received_at,
                         src=source("http", source_name, PATH, f"alarms[{index}]", received_by)))
    return out
