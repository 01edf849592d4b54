"""Fuzzed input against a running ingest (real Kafka, real Mosquitto): it keeps running, every HTTP answer is a
2xx or a 4xx naming a field (never a 5xx), and every MQTT message ends up acknowledged, produced or dead-lettered."""

from __future__ import annotations

import json
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_helpers import RunningService, TopicReader, http, publish_all, publisher

from services.ingest.pipeline import DEAD_LETTERS, READINGS
from services.ingest.service import IngestService

pytestmark = pytest.mark.integration

TOKEN, SECRET = "fuzz-token", "fuzz-secret"
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-(2**64), 2**64) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
bodies = st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                   st.fixed_dictionaries({"source": st.sampled_from(["mes-1", "", "bad name"]),
                                          "readings": st.lists(st.dictionaries(
                                              st.sampled_from(["device", "metric", "value", "observed_at", "unit"]),
                                              json_values), max_size=3)}).map(lambda v: json.dumps(v).encode()),
                   st.fixed_dictionaries({"deduplicationId": st.text(max_size=8), "deviceInfo": st.fixed_dictionaries(
                       {"devEui": st.sampled_from(["a84041000181c061", "zz", ""])}), "data": st.text(max_size=12),
                       "object": json_values}).map(lambda v: json.dumps(v).encode()))


@pytest.fixture(scope="module")
def live(kafka_bootstrap, mosquitto_url):
    from lineguard.catalog import admin_client, bootstrap_topics, load_catalog
    from services.ingest.settings import IngestSettings

    settings = IngestSettings.from_env(environ={}, kafka_bootstrap=kafka_bootstrap, topic_prefix="fuzz.",
                                       http_port=0, push_tokens=[TOKEN], chirpstack_secret=SECRET,
                                       tts_secret=SECRET, mqtt_url=mosquitto_url, mqtt_client_id="ingest-fuzz",
                                       sparkplug_enabled=True, sparkplug_host_id="ingest-fuzz",
                                       delivery_timeout_s=5.0)
    bootstrap_topics(admin_client(kafka_bootstrap), load_catalog(None), settings.topic_prefix)
    running = RunningService(IngestService(settings))
    deadline = time.monotonic() + 10
    while not running.service.mqtt.ever_subscribed:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield running, settings
    running.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, path=st.sampled_from(["/ingest/v1/batch", "/lorawan/chirpstack?event=up", "/lorawan/tts"]))
def test_fuzzed_http_bodies_get_2xx_or_a_4xx_with_a_reason(live, body, path):
    running, _ = live
    status, answer = http("POST", running.url + path, body,
                          {"Authorization": f"Bearer {TOKEN}", "X-Lineguard-Secret": SECRET})
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert answer["error"] and answer["field"]


def test_fuzzed_mqtt_and_sparkplug_messages_are_all_acknowledged_and_accounted_for(live, mosquitto_url):
    running, settings = live
    rng = random.Random(7)
    messages = []
    for i in range(150):
        kind = rng.choice(["garbage", "json", "good", "sparkplug"])
        if kind == "garbage":
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        elif kind == "json":
            payload = json.dumps(rng.choice([[1, 2], {"value": {}}, {"v": "x" * 2000}, None, {"value": 1,
                                                                                             "ts": -5}])).encode()
        else:
            payload = json.dumps({"value": float(i), "ts": 1_790_000_000_000 + i}).encode()
        topic = f"spBv1.0/g/NDATA/node{i}" if kind == "sparkplug" else "plant/line1/fuzz/m"
        messages.append((topic, payload))
    client = publisher(mosquitto_url)
    mqtt_messages = [m for m in messages if m[0].startswith("plant/")]
    before = running.service.mqtt.stats["acknowledged"]
    try:
        publish_all(client, messages)
        deadline = time.monotonic() + 20
        while running.service.mqtt.stats["acknowledged"] - before < len(mqtt_messages):
            assert time.monotonic() < deadline, "a message was never acknowledged"
            time.sleep(0.05)
    finally:
        client.disconnect()
    assert http("GET", running.url + "/livez")[0] == 200
    # Valid: the numbered readings, and a bare JSON null (a reading whose source sent no value).
    good = [m for m in mqtt_messages if b'"ts": 1790' in m[1] or m[1] == b"null"]
    readings = [r for r in TopicReader(settings, READINGS).read_until(len(good), settle=1.0)
                if r.value["source"]["address"] == "plant/line1/fuzz/m"]
    assert len({r.value["id"] for r in readings}) == len(good)
    letters = TopicReader(settings, DEAD_LETTERS, decode=False).read_until(1, settle=1.0)
    mqtt_letters = [d for d in letters if d.headers.get("lineguard.source.protocol") == "mqtt"]
    assert len(mqtt_letters) == len(mqtt_messages) - len(good)
    assert all(d.headers["__connect.errors.exception.message"] for d in mqtt_letters)
    assert any(d.headers.get("lineguard.source.protocol") == "sparkplug" for d in letters)
