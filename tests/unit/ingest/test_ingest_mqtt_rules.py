"""MQTT topic/payload mapping: shapes the simulator sends, tolerated variants, and bad input with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineguard.avro import AvroSerde
from services.ingest.mqtt_rules import DEFAULT_RULES, MqttMapper, TopicRule, load_rules
from services.ingest.parsing import InputError, parse_timestamp

SERDE = AvroSerde(None, None, None, "")
MAPPER = MqttMapper(received_by="pod-1")


def test_simulator_reading_maps_to_a_raw_reading_with_its_source():
    payload = json.dumps({"device": "line1-mixer", "line": "line1", "machine": "mixer", "metric": "torque",
                          "value": 47.91, "unit": "NU", "ts": "2026-11-29T12:00:02.000Z", "seq": 17}).encode()
    emit = MAPPER.map("plant/line1/mixer/torque", payload, received_at=1, position="42")
    value = emit.value
    assert emit.topic == "raw.telemetry.v1" and emit.key == "line1-mixer"
    assert (value["device"], value["metric"], value["value"], value["unit"]) == ("line1-mixer", "torque", 47.91, "NU")
    assert value["observed_at"] == 1795953602000
    assert value["id"] == "mqtt:line1-mixer:torque:1795953602000"
    assert value["source"] == {"protocol": "mqtt", "device": "line1-mixer", "address": "plant/line1/mixer/torque",
                               "position": "42", "received_by": "pod-1"}
    assert value["attributes"] == {"seq": "17"}
    SERDE.encode("raw.telemetry.v1", value)  # fits the schema


def test_the_same_reading_redelivered_gets_the_same_id():
    payload = json.dumps({"value": 1.5, "ts": 1790000000000}).encode()
    first = MAPPER.map("plant/line1/oven/zone1_temperature", payload, 1, "7")
    again = MAPPER.map("plant/line1/oven/zone1_temperature", payload, 999, "8")
    assert first.id == again.id
    assert first.value["device"] == "line1-oven"  # from the topic when the payload names none


def test_simulator_alarm_maps_to_a_raw_alarm():
    payload = json.dumps({"device": "line1-mixer", "alarm_id": "line1-mixer:torque_low", "alarm": "torque_low",
                          "state": "clear", "severity": "Warning", "value": 36.2, "limit": 38.0,
                          "message": "torque back to normal", "ts": 1790000000}).encode()
    emit = MAPPER.map("plant/line1/mixer/alarms", payload, 1, "3")
    assert emit.topic == "raw.alarms.v1"
    assert (emit.value["alarm_type"], emit.value["action"], emit.value["severity"]) == ("torque_low", "clear",
                                                                                       "warning")
    assert emit.value["observed_at"] == 1790000000000
    SERDE.encode("raw.alarms.v1", emit.value)


@pytest.mark.parametrize(("payload", "value", "observed_at"), [
    (b"21.5", 21.5, 5), (b"true", True, 5), (b'"running"', "running", 5),
    (b'{"v": 3, "timestamp": 1790000000123456}', 3.0, 1790000000123),
    (b'{"val": null, "time": "2026-11-29T12:00:00"}', None, 1795953600000),
])
def test_tolerated_payload_shapes(payload, value, observed_at):
    emit = MAPPER.map("plant/line1/conveyor/state", payload, received_at=5)
    assert emit.value["value"] == value and emit.value["observed_at"] == observed_at


@pytest.mark.parametrize(("topic", "payload", "field"), [
    ("plant/line1/mixer/torque", b"{oops", "payload"),
    ("plant/line1/mixer/torque", b'{"unit": "NU"}', "value"),
    ("plant/line1/mixer/torque", b'{"value": {"a": 1}}', "value"),
    ("plant/line1/mixer/torque", b'{"value": 1, "ts": "soon"}', "ts"),
    ("plant/line1/mixer/torque", b"[1, 2]", "payload"),
    ("plant/line1/mixer/alarms", b'{"alarm": "x", "state": "maybe"}', "state"),
    ("plant/line1/mixer/alarms", b'{"state": "raise"}', "alarm"),
    ("other/topic", b"1", "topic"),
])
def test_bad_input_is_rejected_naming_the_field(topic, payload, field):
    with pytest.raises(InputError) as caught:
        MAPPER.map(topic, payload, 1)
    assert caught.value.field == field


def test_rules_from_a_file_and_invalid_rules(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {filter: 'site/+/+', device: '{2}', metric: '{3}', unit: Cel}\n")
    mapper = MqttMapper(load_rules(path))
    emit = mapper.map("site/hall-sensor/temperature", b"19.5", 1)
    assert (emit.value["device"], emit.value["metric"], emit.value["unit"]) == ("hall-sensor", "temperature", "Cel")
    with pytest.raises(ValueError, match="not a valid MQTT topic filter"):
        TopicRule("plant/#/x")
    path.write_text("- {filter: 'a/+', colour: red}\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_rules(path)
    assert load_rules(None) == DEFAULT_RULES


def test_timestamps_in_every_unit_agree():
    ms = 1790000000123
    assert {parse_timestamp(x, "ts") for x in (ms / 1000, ms, ms * 1000, ms * 1_000_000, str(ms))} == {ms}


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(["plant/line1/mixer/torque", "plant/line1/mixer/alarms", "plant/x", "plant/a/b/c"]),
       payload=st.one_of(st.binary(max_size=200),
                         st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                                      lambda inner: st.lists(inner, max_size=4) |
                                      st.dictionaries(st.sampled_from(
                                          ["value", "ts", "unit", "device", "alarm", "state", "severity", "v",
                                           "message", "seq", "x"]), inner, max_size=6),
                                      max_leaves=12).map(lambda v: json.dumps(v).encode())))
def test_fuzzed_messages_map_to_a_valid_record_or_a_reasoned_rejection(topic, payload):
    try:
        emit = MAPPER.map(topic, payload, received_at=1790000000000, position="1")
    except InputError as exc:
        assert str(exc)  # a reason to put in the dead letter
        return
    SERDE.encode(emit.topic, emit.value)  # whatever is accepted fits the schema


def test_a_batch_message_carries_many_readings_and_a_bad_item_is_named():
    body = {"device": "line1-mixer", "ts": 1790000000000, "readings": [
        {"metric": "torque", "value": 47.9, "unit": "NU"}, {"metric": "speed", "value": 70, "ts": 1790000000500},
        {"value": 24.5}]}
    records = MAPPER.map_many("plant/line1/mixer/batch", json.dumps(body).encode(), 1, "12")
    assert [(r.value["metric"], r.value["value"], r.value["observed_at"]) for r in records] == [
        ("torque", 47.9, 1790000000000), ("speed", 70.0, 1790000000500), ("batch", 24.5, 1790000000000)]
    assert [r.value["source"]["position"] for r in records] == ["12:0", "12:1", "12:2"]
    assert len({r.id for r in records}) == 3
    body["readings"][1]["value"] = {"nested": 1}
    with pytest.raises(InputError) as caught:
        MAPPER.map_many("plant/line1/mixer/batch", json.dumps(body).encode(), 1)
    assert caught.value.field == "readings[1].value"


def test_readings_without_a_source_timestamp_never_collide():
    first = MAPPER.map("plant/line1/mixer/torque", b"1.0", received_at=5)
    second = MAPPER.map("plant/line1/mixer/torque", b"1.0", received_at=5)
    assert first.id != second.id and first.value["observed_at"] == second.value["observed_at"] == 5
