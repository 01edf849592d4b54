"""HTTP push and LoRaWAN webhooks (real ChirpStack v4 / TTS v3 shapes from the simulator) into real Kafka."""

from __future__ import annotations

import base64
import time

import polling
import pytest
from ingest_helpers import RunningService, TopicReader, http

from lineguard.lorawan import decode_environment, encode_environment
from services.ingest.pipeline import ALARMS, DEAD_LETTERS, READINGS
from services.ingest.service import IngestService
from simulator.lorawan_webhooks import LoRaWANWebhookEmitter

pytestmark = pytest.mark.integration

TOKEN = "push-token-1"
SECRET = "webhook-secret-1"
EUI = "a84041000181c061"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOOK = {"X-Lineguard-Secret": SECRET}


@pytest.fixture
def service(ingest_settings):
    settings = ingest_settings(push_tokens=[TOKEN], chirpstack_secret=SECRET, tts_secret=SECRET,
                               delivery_timeout_s=2.0)
    running = RunningService(IngestService(settings))
    yield running, settings
    running.stop()


def emitter(f_cnt: int) -> LoRaWANWebhookEmitter:
    em = LoRaWANWebhookEmitter()
    em.dev_eui, em.f_cnt = EUI, f_cnt
    return em


def uplink(f_cnt: int, temperature: float = 21.5, humidity: float = 45.0) -> tuple[bytes, dict, dict]:
    payload = encode_environment(temperature, humidity, 3600)
    radio = {"id": f"{f_cnt:08x}-6f1c-4000-8000-1f0e00000000", "uplink_id": 7895 + f_cnt, "rssi": -70, "snr": 7.5,
             "channel": 2, "time": f"2026-11-29T12:{f_cnt % 60:02d}:00.000Z", "session_key_id": "AXBS"}
    return payload, decode_environment(payload), radio


def test_push_batch_is_in_kafka_before_200_and_a_resend_is_dropped(service):
    running, settings = service
    status, schema = http("GET", running.url + "/ingest/v1/schema")
    assert status == 200 and schema["title"].startswith("Lineguard ingest")
    batch = {"source": "mes-1",
             "readings": [{"device": "line1-mixer", "metric": "torque", "value": 40 + i, "unit": "NU",
                           "observed_at": 1_790_000_000_000 + i} for i in range(50)],
             "alarms": [{"device": "line1-oven", "alarm_type": "OVEN_ZONE1_HIGH", "action": "raise",
                         "severity": "critical", "observed_at": "2026-11-29T12:00:00Z"}]}
    assert http("POST", running.url + "/ingest/v1/batch", batch, AUTH) == (
        200, {"accepted": 51, "duplicates": 0, "dead_lettered": 0})
    assert http("POST", running.url + "/ingest/v1/batch", batch, AUTH) == (
        200, {"accepted": 0, "duplicates": 51, "dead_lettered": 0})
    readings = TopicReader(settings, READINGS).poll(1.0)  # already there: 200 came after delivery
    assert len(readings) == 50 and len({r.value["id"] for r in readings}) == 50
    assert readings[0].value["source"]["protocol"] == "http" and readings[0].value["source"]["device"] == "mes-1"
    assert len(TopicReader(settings, ALARMS).poll(1.0)) == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"source": "mes-1", "readings": [{"device": "d", "metric": "m", "value": 1, "observed_at": 1}, {"device": "d"}]},
     "readings[1].metric"),
    ({"source": "mes-1", "readings": [{"device": "d", "metric": "m", "value": [1], "observed_at": 1}]},
     "readings[0].value"),
    ({"source": "mes-1", "alarms": [{"device": "d", "alarm_type": "t", "action": "blink", "observed_at": 1}]},
     "alarms[0].action"),
    ({"readings": []}, "source"),
    ({"source": "mes-1", "readings": [{"device": "d", "metric": "m", "value": 1, "observed_at": 1, "x": 1}]},
     "readings[0].x"),
])
def test_push_rejects_bad_batches_naming_the_field_and_takes_nothing(service, body, field):
    running, settings = service
    status, answer = http("POST", running.url + "/ingest/v1/batch", body, AUTH)
    assert status == 400 and answer["field"] == field
    assert TopicReader(settings, READINGS).poll(0.5) == []


def test_push_needs_the_bearer_token(service):
    running, _ = service
    assert http("POST", running.url + "/ingest/v1/batch", {"source": "x"}, {})[0] == 401
    assert http("POST", running.url + "/ingest/v1/batch", {"source": "x"}, {"Authorization": "Bearer nope"})[0] == 401
    assert http("POST", running.url + "/ingest/v1/batch", b"{", AUTH)[1]["field"] == "body"


def test_chirpstack_and_tts_uplinks_arrive_once_each_with_their_source(service):
    running, settings = service
    base = running.url
    for f_cnt in range(3):
        payload, decoded, radio = uplink(f_cnt)
        body = emitter(f_cnt).chirpstack_body(payload, decoded, radio)
        assert http("POST", f"{base}/lorawan/chirpstack?event=up", body, HOOK)[0] == 200
        assert http("POST", f"{base}/lorawan/chirpstack?event=up", body, HOOK)[1]["duplicates"] == 4  # retry
        tts = emitter(f_cnt).tts_body(payload, decoded, radio)
        assert http("POST", f"{base}/lorawan/tts", tts, HOOK)[0] == 200
    # Without a decoded object the device's codec decodes frm_payload / data.
    payload, decoded, radio = uplink(10, temperature=-3.25, humidity=80.0)
    body = emitter(10).chirpstack_body(payload, decoded, radio)
    del body["object"]
    assert http("POST", f"{base}/lorawan/chirpstack?event=up", body, HOOK)[1]["accepted"] == 4
    tts = emitter(10).tts_body(payload, decoded, radio)
    del tts["uplink_message"]["decoded_payload"]
    assert http("POST", f"{base}/lorawan/tts/uplink-message", tts, HOOK)[1]["accepted"] == 4
    # Other events are acknowledged and not ingested.
    assert http("POST", f"{base}/lorawan/chirpstack?event=join", {"deduplicationId": "j"}, HOOK) == (
        200, {"ignored": "join"})
    assert http("POST", f"{base}/lorawan/tts", {"end_device_ids": {"dev_eui": EUI.upper()}, "join_accept": {}},
                HOOK) == (200, {"ignored": "join_accept"})

    readings = TopicReader(settings, READINGS).read_until(32)
    assert len(readings) == 32 and len({r.value["id"] for r in readings}) == 32
    by_protocol = {p: [r.value for r in readings if r.value["source"]["protocol"] == p] for p in ("chirpstack", "tts")}
    assert len(by_protocol["chirpstack"]) == 16 and len(by_protocol["tts"]) == 16
    cold = [r for r in by_protocol["chirpstack"] if r["source"]["position"] == "10"]
    assert {(r["metric"], r["value"], r["unit"]) for r in cold} >= {("temperature", -3.25, "Cel"),
                                                                     ("humidity", 80.0, "%RH")}
    assert all(r.value["device"] == EUI and r.value["attributes"]["gateways"] == "1" for r in readings)
    assert {r["source"]["address"] for r in by_protocol["tts"]} == {"/lorawan/tts", "/lorawan/tts/uplink-message"}


def test_webhooks_need_their_secret_and_bad_uplinks_are_dead_lettered(service):
    running, settings = service
    base = running.url
    payload, decoded, radio = uplink(1)
    body = emitter(1).chirpstack_body(payload, decoded, radio)
    assert http("POST", f"{base}/lorawan/chirpstack?event=up", body, {})[0] == 401
    assert http("POST", f"{base}/lorawan/tts", body, {"X-Lineguard-Secret": "wrong"})[0] == 401
    # Undecodable payload: dead-lettered and acknowledged (a retry would not help).
    del body["object"]
    body["data"] = base64.b64encode(b"\x09garbage").decode()
    status, answer = http("POST", f"{base}/lorawan/chirpstack?event=up", body, HOOK)
    assert status == 200 and answer["dead_lettered"] == 1 and "unknown payload version" in answer["reason"]
    # Not an uplink at all: dead-lettered and 400 naming the field.
    status, answer = http("POST", f"{base}/lorawan/chirpstack?event=up", {"deduplicationId": "x"}, HOOK)
    assert status == 400 and answer["field"] == "deviceInfo"
    letters = TopicReader(settings, DEAD_LETTERS, decode=False).read_until(2)
    assert len(letters) == 2
    assert {d.headers["lineguard.source.protocol"] for d in letters} == {"chirpstack"}
    assert all(SECRET not in str(d.headers) for d in letters)


def test_webhooks_are_spooled_while_kafka_is_down_503_only_when_full_and_push_gets_503(ingest_settings,
                                                                                       pausable_kafka):
    settings = ingest_settings(kafka_bootstrap=pausable_kafka.bootstrap, push_tokens=[TOKEN],
                               chirpstack_secret=SECRET, delivery_timeout_s=1.5, webhook_spool_max_bytes=65536)
    running = RunningService(IngestService(settings, **{"message.timeout.ms": 3000, "request.timeout.ms": 2000}))
    accepted = 0
    try:
        pausable_kafka.pause()
        for f_cnt in range(200):
            payload, decoded, radio = uplink(f_cnt)
            started = time.monotonic()
            status, answer = http("POST", f"{running.url}/lorawan/chirpstack?event=up",
                                  emitter(f_cnt).chirpstack_body(payload, decoded, radio), HOOK)
            assert time.monotonic() - started < 2, "network servers do not retry: answer fast"
            if status != 200:
                break
            accepted += 1
        assert status == 503 and "spool" in answer["error"] and 5 < accepted < 200  # full, not Kafka, says no
        batch = {"source": "mes-1", "readings": [{"device": "d", "metric": "m", "value": 1, "observed_at": 1}]}
        assert http("POST", f"{running.url}/ingest/v1/batch", batch, AUTH)[0] == 503  # push: the caller retries
        pausable_kafka.resume()
        assert polling.wait_for(lambda: len(running.service.http.spool) == 0, 30)
        assert http("POST", f"{running.url}/ingest/v1/batch", batch, AUTH)[0] == 200
    finally:
        pausable_kafka.resume()
        running.stop()
    readings = TopicReader(settings, READINGS).read_until(accepted * 4 + 1, settle=1.0)
    ids = [r.value["id"] for r in readings]
    assert len(ids) == len(set(ids)) == accepted * 4 + 1  # every spooled uplink, once, and the pushed one


def test_bodies_over_the_limit_get_413_and_metrics_count_per_adapter(ingest_settings):
    settings = ingest_settings(push_tokens=[TOKEN], chirpstack_secret=SECRET, max_body_bytes=1000)
    running = RunningService(IngestService(settings))
    try:
        big = {"source": "mes-1", "readings": [{"device": "d", "metric": "m", "value": "x" * 1000, "observed_at": 1}]}
        status, answer = http("POST", running.url + "/ingest/v1/batch", big, AUTH)
        assert status == 413 and "1000 bytes" in answer["error"]
        assert http("POST", running.url + "/lorawan/chirpstack?event=status", {"x": 1}, HOOK)[0] == 200
        metrics = http("GET", running.url + "/metrics")[1]["raw"]
    finally:
        running.stop()
    assert 'lineguard_ingest_requests_rejected_total{adapter="http",status="413"} 1.0' in metrics
    assert 'lineguard_ingest_events_ignored_total{adapter="chirpstack",event="status"}' in metrics
