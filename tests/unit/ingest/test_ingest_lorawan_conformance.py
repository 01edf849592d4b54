"""LoRaWAN webhook bodies as The Things Stack v3 and ChirpStack v4 send them, in the cases real servers produce:
an ABP device without a DevEUI, a gateway with a bad clock, and lists inside the decoded payload."""

from __future__ import annotations

import base64
import json

import pytest

from lineguard.avro import AvroSerde
from lineguard.lorawan import encode_environment
from services.ingest import lorawan_webhooks
from services.ingest.lorawan_webhooks import UndecodablePayload
from services.ingest.parsing import InputError, parse_timestamp

SERDE = AvroSerde(None, None, None, "")
RECEIVED = parse_timestamp("2026-11-29T12:00:05Z", "t")


def tts_body(ids: dict | None = None, rx: list | None = None, decoded: dict | None = None, **up) -> dict:
    body = {"end_device_ids": ids or {"device_id": "hall-env-1", "application_ids": {"application_id": "plant"},
                                      "dev_eui": "A84041000181C061", "dev_addr": "00BCB929"},
            "correlation_ids": ["as:up:01HXYZ", "gs:uplink:01H"], "received_at": "2026-11-29T12:00:01.2Z",
            "uplink_message": {"f_port": 2, "f_cnt": 42,
                               "frm_payload": base64.b64encode(encode_environment(20.0, 50.0)).decode(),
                               "decoded_payload": decoded if decoded is not None else {"temperature": 20.0},
                               "rx_metadata": rx if rx is not None else [
                                   {"gateway_ids": {"gateway_id": "gw1"}, "time": "2026-11-29T12:00:00.9Z",
                                    "rssi": -68, "snr": 9.2}],
                               "received_at": "2026-11-29T12:00:01Z", **up}}
    return body


def parse(body: dict):
    kind, data = lorawan_webhooks.parse_tts(json.dumps(body).encode())
    assert kind == "uplink_message"
    return lorawan_webhooks.parse_tts_uplink(data, RECEIVED)


def test_an_abp_device_without_dev_eui_is_identified_by_device_id_and_dev_addr():
    uplink = parse(tts_body(ids={"device_id": "abp-meter-7", "application_ids": {"application_id": "plant"},
                                 "dev_addr": "260B1234"}))
    assert uplink.dev_eui == "abp-meter-7"
    (record,) = lorawan_webhooks.uplink_readings(uplink, {}, "/lorawan/tts", RECEIVED, None)
    assert record.value["device"] == "abp-meter-7" and record.key == "abp-meter-7"
    assert record.value["attributes"]["dev_addr"] == "260b1234"
    assert record.value["attributes"]["activation"] == "abp"
    SERDE.encode(record.topic, record.value)
    with pytest.raises(InputError, match="device_id and dev_addr") as info:
        parse(tts_body(ids={"device_id": "abp-meter-7"}))
    assert info.value.field == "end_device_ids.dev_eui"


def test_observed_at_is_the_network_servers_receive_time_not_a_gateway_clock():
    bad_clock = [{"gateway_ids": {"gateway_id": "gw1"}, "time": "2000-01-01T00:00:00Z", "rssi": -70}]
    uplink = parse(tts_body(rx=bad_clock))
    assert uplink.observed_at == parse_timestamp("2026-11-29T12:00:01Z", "t")
    assert uplink.attributes["time_source"] == "uplink_message.received_at"


def test_a_gps_synchronised_gateway_time_is_used_only_when_plausible():
    gps = [{"gateway_ids": {"gateway_id": "gw1"}, "time": "2026-11-29T12:00:00.95Z",
            "gps_time": "2026-11-29T12:00:00.95Z"}]
    uplink = parse(tts_body(rx=gps))
    assert uplink.observed_at == parse_timestamp("2026-11-29T12:00:00.95Z", "t")
    assert uplink.attributes["time_source"] == "rx_metadata[0].gps_time"
    wrong_gps = [{"gateway_ids": {"gateway_id": "gw1"}, "gps_time": "2026-11-28T12:00:00Z"}]
    assert parse(tts_body(rx=wrong_gps)).observed_at == parse_timestamp("2026-11-29T12:00:01Z", "t")
    # Without any server time: our receive time.
    body = tts_body(rx=[])
    del body["received_at"], body["uplink_message"]["received_at"]
    assert parse(body).observed_at == RECEIVED


def test_lists_in_the_decoded_payload_become_one_reading_per_element_with_its_index():
    decoded = {"temperatures": [20.5, 21.0, 21.5], "probes": [{"id": "a", "t": 1.5}, {"id": "b", "t": 2.5}],
               "matrix": [[1, 2], [3]], "battery_mv": 3600}
    uplink = parse(tts_body(decoded=decoded))
    records = lorawan_webhooks.uplink_readings(uplink, {}, "/lorawan/tts", RECEIVED, None)
    got = {r.value["metric"]: (r.value["value"], r.value["attributes"].get("index")) for r in records}
    assert got == {"temperatures[0]": (20.5, "0"), "temperatures[1]": (21.0, "1"), "temperatures[2]": (21.5, "2"),
                   "probes[0].id": ("a", "0"), "probes[0].t": (1.5, "0"), "probes[1].id": ("b", "1"),
                   "probes[1].t": (2.5, "1"), "matrix[0][0]": (1.0, "0,0"), "matrix[0][1]": (2.0, "0,1"),
                   "matrix[1][0]": (3.0, "1,0"), "battery_mv": (3600.0, None)}
    assert len({r.id for r in records}) == len(records)
    for record in records:
        SERDE.encode(record.topic, record.value)


def test_what_cannot_be_mapped_is_dead_lettered_never_dropped():
    too_deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    with pytest.raises(UndecodablePayload, match="nested deeper"):
        lorawan_webhooks.uplink_readings(parse(tts_body(decoded=too_deep)), {}, "/x", RECEIVED, None)
    too_many = {"samples": list(range(2000))}
    with pytest.raises(UndecodablePayload, match="more than 1024 values"):
        lorawan_webhooks.uplink_readings(parse(tts_body(decoded=too_many)), {}, "/x", RECEIVED, None)
