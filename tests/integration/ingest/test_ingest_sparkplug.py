"""Sparkplug B host against a real Mosquitto: STATE, births, alias resolution, Rebirth on a seq gap, stale."""

from __future__ import annotations

import json
import threading

import polling
import pytest
from ingest_helpers import RunningService, TopicReader, publisher

from lineguard import sparkplug as spb
from services.ingest.pipeline import ALARMS, READINGS
from services.ingest.service import IngestService

pytestmark = pytest.mark.integration

G, N = "bakery1", "line1-oven"
T = 1_790_000_000_000


def wait_for(predicate, timeout: float = 15.0) -> bool:
    return polling.wait_for(predicate, timeout)


def test_sparkplug_node_lifecycle_through_the_service(ingest_settings, mosquitto_url):
    settings = ingest_settings(mqtt_url=mosquitto_url, sparkplug_enabled=True, sparkplug_host_id="lg-test",
                               sparkplug_groups=[G], mqtt_client_id="ingest-spb-test")
    running = RunningService(IngestService(settings))
    edge = publisher(mosquitto_url)
    seen: dict[str, list[bytes]] = {"state": [], "ncmd": []}
    subscribed = threading.Event()

    def on_message(client, userdata, message):
        seen["state" if "/STATE/" in message.topic else "ncmd"].append(message.payload)

    edge.on_message = on_message
    edge.on_subscribe = lambda *a: subscribed.set()
    edge.subscribe([("spBv1.0/STATE/lg-test", 1), (spb.topic(G, "NCMD", N), 0)])
    try:
        assert subscribed.wait(5)
        assert wait_for(lambda: running.service.sparkplug.ever_subscribed and seen["state"])
        assert json.loads(seen["state"][-1])["online"] is True
        birth = spb.encode_payload([
            spb.Metric(spb.BDSEQ_METRIC, 0, spb.DataType.Int64),
            spb.Metric(spb.REBIRTH_METRIC, False, spb.DataType.Boolean),
            spb.Metric("zone1_temperature", 180.0, spb.DataType.Double, alias=1, properties={"engUnit": "CEL"}),
            spb.Metric("Alarms/zone1_temperature_high", False, spb.DataType.Boolean, alias=2)], T, seq=0)
        edge.publish(spb.topic(G, "NBIRTH", N), birth).wait_for_publish(5)
        for seq in (1, 2):
            data = spb.encode_payload([spb.Metric(None, 180.0 + seq, spb.DataType.Double, alias=1,
                                                  timestamp_ms=T + seq)], T + seq, seq=seq)
            edge.publish(spb.topic(G, "NDATA", N), data).wait_for_publish(5)
        alarm = spb.encode_payload([spb.Metric(None, True, spb.DataType.Boolean, alias=2, timestamp_ms=T + 3)],
                                   T + 3, seq=3)
        edge.publish(spb.topic(G, "NDATA", N), alarm).wait_for_publish(5)
        gap = spb.encode_payload([spb.Metric(None, 230.0, spb.DataType.Double, alias=1, timestamp_ms=T + 9)],
                                 T + 9, seq=9)
        edge.publish(spb.topic(G, "NDATA", N), gap).wait_for_publish(5)
        assert wait_for(lambda: seen["ncmd"]), "no Rebirth request after a seq gap"
        command = spb.decode_payload(seen["ncmd"][0])
        assert command.metric(spb.REBIRTH_METRIC).value is True
        death = spb.encode_payload([spb.Metric(spb.BDSEQ_METRIC, 0, spb.DataType.Int64)], T + 20, seq=None)
        edge.publish(spb.topic(G, "NDEATH", N), death, qos=1).wait_for_publish(5)
        readings = TopicReader(settings, READINGS).read_until(5)
    finally:
        running.stop()
        edge.disconnect()
    values = sorted((r.value["value"] is None, r.value["observed_at"], r.value["value"]) for r in readings)
    assert [v[2] for v in values if not v[0]] == [180.0, 181.0, 182.0, 230.0]
    stale = [r.value for r in readings if r.value["value"] is None]
    assert [(s["metric"], s["attributes"]["quality"]) for s in stale] == [("zone1_temperature", "stale")]
    assert all(r.value["unit"] == "CEL" and r.value["device"] == N for r in readings)
    alarms = TopicReader(settings, ALARMS).read_until(1)
    assert [(a.value["alarm_type"], a.value["action"]) for a in alarms] == [("zone1_temperature_high", "raise")]
    assert json.loads(seen["state"][-1])["online"] is False  # published on a clean stop
