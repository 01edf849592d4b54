"""HTTP push and LoRaWAN webhook parsers: valid shapes, the published schema, and fuzzed input."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineguard.avro import AvroSerde
from lineguard.lorawan import encode_environment
from services.ingest import http_push, lorawan_webhooks
from services.ingest.lorawan_webhooks import UndecodablePayload
from services.ingest.parsing import InputError

SERDE = AvroSerde(None, None, None, "")
CODECS = {"a84041000181c061": "environment"}

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10)


def test_published_schema_accepts_its_example_and_the_parser_agrees():
    jsonschema = pytest.importorskip("jsonschema")
    schema = http_push.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for example in schema["examples"]:
        jsonschema.validate(example, schema)
        records = http_push.parse_batch(json.dumps(example).encode(), 1, None)
        assert len(records) == len(example.get("readings", [])) + len(example.get("alarms", []))
        for record in records:
            SERDE.encode(record.topic, record.value)


def test_push_ids_are_the_senders_or_derived_from_the_reading():
    body = {"source": "mes-1", "readings": [
        {"id": "r-9", "device": "d", "metric": "m", "value": 1, "observed_at": 1790000000000},
        {"device": "d", "metric": "m", "value": "on", "observed_at": "2026-11-29T12:00:00+01:00"}]}
    first, second = http_push.parse_batch(json.dumps(body).encode(), 1, "pod")
    assert first.id == "http:mes-1:r-9"
    assert second.id == "http:mes-1:d:m:1795950000000"


@settings(max_examples=200, deadline=None)
@given(body=st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode()),
                      st.fixed_dictionaries({"source": st.text(max_size=8), "readings": st.lists(
                          st.dictionaries(st.sampled_from(["device", "metric", "value", "observed_at", "unit",
                                                           "attributes", "id"]), json_values, max_size=7),
                          max_size=3)}).map(lambda v: json.dumps(v).encode())))
def test_fuzzed_push_bodies_give_records_or_a_field_named_rejection(body):
    try:
        records = http_push.parse_batch(body, 1, None)
    except InputError as exc:
        assert exc.field and exc.message
        return
    for record in records:
        SERDE.encode(record.topic, record.value)


def chirpstack_body(**overrides) -> dict:
    body = {"deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d", "time": "2026-11-29T12:00:00Z",
            "deviceInfo": {"devEui": "a84041000181c061", "deviceName": "hall-env-1"}, "fCnt": "42", "fPort": 2,
            "data": base64.b64encode(encode_environment(21.5, 45.0)).decode(),
            "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -52, "snr": 13.75}]}
    body.update(overrides)
    return body


def test_chirpstack_uplink_without_object_is_decoded_by_the_device_codec():
    uplink = lorawan_webhooks.parse_chirpstack_up(json.dumps(chirpstack_body()).encode(), 5)
    assert (uplink.f_cnt, uplink.observed_at, uplink.decoded) == (42, 1795953600000, None)
    records = lorawan_webhooks.uplink_readings(uplink, CODECS, "/lorawan/chirpstack", 5, None)
    values = {r.value["metric"]: (r.value["value"], r.value["unit"]) for r in records}
    assert values["temperature"] == (21.5, "Cel") and values["humidity"] == (45.0, "%RH")
    assert {r.id for r in records} >= {"chirpstack:3ac7e3c4-4401-4b8d-9386-a5c902f9202d:temperature"}
    assert records[0].value["attributes"]["codec"] == "environment"
    assert records[0].value["attributes"]["rssi"] == "-52"


def test_uplink_of_a_device_without_codec_is_undecodable():
    body = chirpstack_body(deviceInfo={"devEui": "0102030405060708"})
    uplink = lorawan_webhooks.parse_chirpstack_up(json.dumps(body).encode(), 5)
    with pytest.raises(UndecodablePayload, match="no codec"):
        lorawan_webhooks.uplink_readings(uplink, CODECS, "/lorawan/chirpstack", 5, None)


def test_tts_uplink_uses_the_uplink_correlation_id_and_tolerates_left_out_zeros():
    body = {"end_device_ids": {"device_id": "dev1", "dev_eui": "A84041000181C061"},
            "correlation_ids": ["gs:uplink:01H", "as:up:01HXYZ"], "received_at": "2026-11-29T12:00:00Z",
            "uplink_message": {"frm_payload": base64.b64encode(encode_environment(20.0, 50.0)).decode(),
                               "decoded_payload": {"temperature": 20.0, "humidity": 50.0}}}
    kind, data = lorawan_webhooks.parse_tts(json.dumps(body).encode())
    uplink = lorawan_webhooks.parse_tts_uplink(data, 7)
    assert kind == "uplink_message" and uplink.dedup_id == "as:up:01HXYZ"
    assert (uplink.f_cnt, uplink.f_port, uplink.dev_eui) == (0, 0, "a84041000181c061")


@settings(max_examples=200, deadline=None)
@given(body=st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode()),
                      st.builds(lambda data, obj, fcnt: json.dumps(chirpstack_body(data=data, object=obj,
                                                                                   fCnt=fcnt)).encode(),
                                st.one_of(st.none(), st.text(max_size=16),
                                          st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode())),
                                st.one_of(st.none(), json_values), json_values)))
def test_fuzzed_webhook_bodies_give_readings_or_a_reason(body):
    for parse in (lambda: lorawan_webhooks.parse_chirpstack_up(body, 1),
                  lambda: lorawan_webhooks.parse_tts_uplink(lorawan_webhooks.parse_tts(body)[1], 1)):
        try:
            uplink = parse()
            records = lorawan_webhooks.uplink_readings(uplink, CODECS, "/x", 1, None)
        except (InputError, UndecodablePayload) as exc:
            assert str(exc)
            continue
        for record in records:
            SERDE.encode(record.topic, record.value)
