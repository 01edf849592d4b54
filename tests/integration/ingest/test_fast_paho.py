"""FastClient (bulk reads, coalesced PUBACKs, direct message hand-off) against a real Mosquitto."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from ingest_helpers import publish_all, publisher
from polling import wait_for

from services.ingest.fast_paho import FastClient

pytestmark = pytest.mark.integration


def subscriber(mosquitto_url: str, topic: str) -> tuple[FastClient, list[mqtt.MQTTMessage], threading.Event]:
    host, port = mosquitto_url.removeprefix("mqtt://").split(":")
    received: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    client = FastClient(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fast-{uuid.uuid4().hex[:6]}")
    client.on_message = lambda c, u, message: received.append(message)
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe(topic, qos=1)
    client.connect(host, int(port))
    client.loop_start()
    assert subscribed.wait(10)
    return client, received, subscribed


def test_messages_reach_on_message_with_topic_payload_and_qos(mosquitto_url):
    topic = f"fast/{uuid.uuid4().hex[:6]}"
    client, received, _ = subscriber(mosquitto_url, topic + "/#")
    pub = publisher(mosquitto_url)
    try:
        publish_all(pub, [(f"{topic}/a", b"one")], qos=0)
        publish_all(pub, [(f"{topic}/b", f"m{i}".encode()) for i in range(500)], qos=1)
        assert wait_for(lambda: len(received) == 501, timeout=10), f"{len(received)} of 501 delivered"
        assert (received[0].topic, received[0].payload, received[0].qos) == (f"{topic}/a", b"one", 0)
        assert [m.payload for m in received[1:]] == [f"m{i}".encode() for i in range(500)]
        assert {m.qos for m in received[1:]} == {1} and len({m.mid for m in received[1:]}) > 1
        assert all(m.info is None for m in received)  # handed over directly, not through paho's generic path
    finally:
        pub.disconnect()
        client.disconnect()
        client.loop_stop()


def test_per_topic_callbacks_still_take_precedence(mosquitto_url):
    topic = f"fast/{uuid.uuid4().hex[:6]}"
    client, received, _ = subscriber(mosquitto_url, topic + "/#")
    routed: list[bytes] = []
    client.message_callback_add(f"{topic}/special", lambda c, u, message: routed.append(message.payload))
    pub = publisher(mosquitto_url)
    try:
        publish_all(pub, [(f"{topic}/special", b"routed"), (f"{topic}/plain", b"plain")], qos=1)
        assert wait_for(lambda: routed and received, timeout=10)
        assert routed == [b"routed"] and [m.payload for m in received] == [b"plain"]
    finally:
        pub.disconnect()
        client.disconnect()
        client.loop_stop()
