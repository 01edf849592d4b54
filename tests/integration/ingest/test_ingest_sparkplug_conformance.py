"""The Sparkplug B host against an edge node built on Eclipse Tahu's Python library (tahu_edge.py), over a real
Mosquitto: datatypes learned from births, arrays, UInt64 beyond 2^53, unknown aliases dead-lettered with the
payload's own bytes, deaths stamped with the host's receive time; STATE as Sparkplug 3.0 asks (answering a
retained offline STATE on its own id, a fresh timestamp per CONNECT, QoS 1) and every node stale when the host
itself loses the broker."""

from __future__ import annotations

import importlib.util
import json
import threading
import uuid

import paho.mqtt.client as mqtt
import polling
import pytest
from ingest_helpers import RunningService, TopicReader, publisher
from tahu_edge import TahuEdgeNode, now_ms

from services.ingest.pipeline import DEAD_LETTERS, READINGS
from services.ingest.service import IngestService

pytestmark = pytest.mark.integration
if importlib.util.find_spec("sparkplub_b_packets") is None:
    pytest.skip("sparkplug-b-packets (Eclipse Tahu's Python core, the dev extra) is not installed",
                allow_module_level=True)

G, N = "bakery2", "line2-oven"


def host_settings(ingest_settings, mosquitto_url: str, host_id: str):
    return ingest_settings(mqtt_url=mosquitto_url, sparkplug_enabled=True, sparkplug_host_id=host_id,
                           sparkplug_groups=[G], mqtt_client_id=f"{host_id}-mqtt", mqtt_topics=["unused/+"])


class StateWatcher:
    """Every STATE message of one host id, as another Sparkplug client sees them."""

    def __init__(self, mqtt_url: str, host_id: str) -> None:
        self.messages: list[dict] = []
        self.client = publisher(mqtt_url)
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.messages.append(json.loads(m.payload))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.subscribe(f"spBv1.0/STATE/{host_id}", qos=1)
        assert subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_state(mqtt_url: str, host_id: str) -> dict:
    watcher = StateWatcher(mqtt_url, host_id)
    try:
        assert polling.wait_for(lambda: watcher.messages, 5)
        return watcher.messages[-1]
    finally:
        watcher.close()


def test_tahu_edge_node_datatypes_arrays_uint64_unknown_alias_and_death(ingest_settings, mosquitto_url):
    host_id = f"lg-{uuid.uuid4().hex[:6]}"
    settings = host_settings(ingest_settings, mosquitto_url, host_id)
    running = RunningService(IngestService(settings))
    edge = None
    try:
        assert polling.wait_for(lambda: running.service.sparkplug.ever_subscribed, 15)
        edge = TahuEdgeNode(mosquitto_url, G, N)
        edge.birth([("offset", 1, "Int32", -6), ("counter", 2, "UInt64", 2**53 + 1),
                    ("profile", 3, "FloatArray", [1.5, 2.5, -3.25]), ("zones", 4, "Int16Array", [180, -5]),
                    ("speed", 5, "Double", 1.25)])
        edge.device_birth("probe1", [("level", 10, "Int16", -300)])
        edge.data([(1, "Int32", -7), (2, "UInt64", 2**64 - 1), (3, "FloatArray", [0.5])])  # no datatypes
        edge.data([(10, "Int16", -301)], device="probe1")
        last_data_ms = now_ms()
        unknown = edge.data([(99, "Double", 1.0)])
        edge.die()
        expected = 8 + 1 + 3 + 1 + 7  # births, data, and the stale readings of the death
        readings = TopicReader(settings, READINGS).read_until(expected, settle=1.0)
        letters = TopicReader(settings, DEAD_LETTERS, decode=False).read_until(1)
    finally:
        running.stop()
        if edge is not None:
            edge.close()
    values = [r.value for r in readings]
    assert len(values) == expected, sorted((v["metric"], v["value"]) for v in values)
    live = {(v["device"], v["metric"], v["value"]) for v in values if v["value"] is not None}
    assert live == {
        (N, "offset", -6.0), (N, "offset", -7.0), (N, "counter", "9007199254740993"),
        (N, "counter", "18446744073709551615"), (N, "profile[0]", 1.5), (N, "profile[1]", 2.5),
        (N, "profile[2]", -3.25), (N, "profile[0]", 0.5), (N, "zones[0]", 180.0), (N, "zones[1]", -5.0),
        (N, "speed", 1.25), ("probe1", "level", -300.0), ("probe1", "level", -301.0)}
    typed = {(v["metric"], v["attributes"]["datatype"]) for v in values if v["value"] is not None}
    assert ("offset", "Int32") in typed and ("level", "Int16") in typed and ("counter", "UInt64") in typed
    assert {v["attributes"].get("index") for v in values if v["metric"].startswith("profile")} >= {"0", "1", "2"}
    stale = [v for v in values if v["attributes"].get("quality") == "stale"]
    assert {(v["device"], v["metric"]) for v in stale} == {
        (N, "offset"), (N, "counter"), (N, "profile[0]"), (N, "zones[0]"), (N, "zones[1]"), (N, "speed"),
        ("probe1", "level")}
    # The will's timestamp is the CONNECT's; the stale readings carry the host's receive time, after the data.
    assert all(v["observed_at"] == v["received_at"] >= last_data_ms > edge.connected_at for v in stale)
    (letter,) = letters
    assert letter.value == unknown  # the original payload bytes, not an empty or re-encoded body
    assert "alias(es) 99" in letter.headers["__connect.errors.exception.message"]


def test_state_is_answered_restamped_per_connect_and_a_lost_broker_marks_nodes_stale(ingest_settings,
                                                                                        mosquitto_url):
    host_id = f"lg-{uuid.uuid4().hex[:6]}"
    state_topic = f"spBv1.0/STATE/{host_id}"
    # An offline STATE of an earlier session, retained by the broker, as a host's will leaves it.
    leftover = publisher(mosquitto_url)
    leftover.publish(state_topic, json.dumps({"online": False, "timestamp": 1}), qos=1, retain=True) \
        .wait_for_publish(5)
    leftover.disconnect()
    watcher = StateWatcher(mosquitto_url, host_id)
    settings = host_settings(ingest_settings, mosquitto_url, host_id)
    running = RunningService(IngestService(settings))
    host = running.service.sparkplug
    edge = kicker = None
    try:
        assert polling.wait_for(lambda: host.ever_subscribed and host.stats["state_republished"] >= 1, 15)
        assert host.granted_qos and set(host.granted_qos) == {1}  # the broker granted QoS 1 on every filter
        assert retained_state(mosquitto_url, host_id)["online"] is True  # the leftover offline is replaced
        first = next(m for m in watcher.messages if m["online"])["timestamp"]
        assert first > 1

        edge = TahuEdgeNode(mosquitto_url, G, N)
        edge.birth([("speed", 1, "Double", 1.5), ("mode", 2, "String", "run")])
        assert polling.wait_for(lambda: host.stats["records"] >= 2, 10)
        lost_at = now_ms()
        # Another client takes the host's client id: the broker drops the host, which reconnects.
        kicker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{host_id}-sparkplug-host")
        host_part, port = mosquitto_url.removeprefix("mqtt://").split(":")
        kicker.connect(host_part, int(port))
        kicker.loop_start()
        assert polling.wait_for(lambda: host.stats["connections_lost"] >= 1, 10)
        kicker.disconnect()
        kicker.loop_stop()
        assert polling.wait_for(lambda: [m for m in watcher.messages if m["online"] and m["timestamp"] > first],
                                20)
        wills = [m for m in watcher.messages if not m["online"] and m["timestamp"] != 1]
        assert wills and wills[0]["timestamp"] == first  # the will carried the first CONNECT's time
        second = [m for m in watcher.messages if m["online"] and m["timestamp"] > first][0]["timestamp"]
        assert second >= lost_at
        readings = TopicReader(settings, READINGS).read_until(4)
    finally:
        running.stop()
        watcher.close()
        if edge is not None:
            edge.close()
    stale = [r.value for r in readings if r.value["attributes"].get("quality") == "stale"]
    assert sorted(v["metric"] for v in stale) == ["mode", "speed"]
    assert all(v["observed_at"] >= lost_at for v in stale)
    assert retained_state(mosquitto_url, host_id)["online"] is False  # a clean stop says offline, not answered
