"""MQTT adapter against a real Mosquitto and a real Kafka-compatible broker (Tansu)."""

from __future__ import annotations

import json
import time

import pytest
from ingest_helpers import TopicReader, http, publish_all, publisher
from polling import wait_for

from lineguard.embedded import free_port
from services.ingest.mqtt_adapter import MqttAdapter
from services.ingest.pipeline import ALARMS, DEAD_LETTERS, READINGS, IngestPipeline

pytestmark = pytest.mark.integration

T0 = 1_790_000_000_000


def reading_message(i: int, machine: str = "mixer", metric: str = "torque") -> tuple[str, bytes]:
    body = {"device": f"line1-{machine}", "line": "line1", "machine": machine, "metric": metric,
            "value": 40.0 + i / 10, "unit": "NU", "ts": T0 + i * 1000, "seq": i + 1}
    return f"plant/line1/{machine}/{metric}", json.dumps(body).encode()




def start_adapter(settings, mosquitto_url: str, client_id: str, **overrides) -> tuple[IngestPipeline, MqttAdapter]:
    pipeline = IngestPipeline(settings, **overrides)
    adapter = MqttAdapter(pipeline, mosquitto_url, ["plant/+/+/+"], client_id)
    adapter.start()
    assert adapter.wait_ready(10), "the adapter did not subscribe"
    return pipeline, adapter


def test_every_reading_arrives_once_with_its_source_and_bad_ones_are_dead_lettered(
        ingest_settings, mosquitto_url):
    settings = ingest_settings()
    pipeline, adapter = start_adapter(settings, mosquitto_url, "ingest-once")
    good = [reading_message(i) for i in range(300)]
    alarm = ("plant/line1/oven/alarms", json.dumps({
        "device": "line1-oven", "alarm_id": "line1-oven:zone1_high", "alarm": "zone1_high", "state": "raise",
        "severity": "critical", "message": "zone 1 too hot", "ts": "2026-11-29T12:00:02.000Z"}).encode())
    bad = [("plant/line1/mixer/torque", b"{not json"),
           ("plant/line1/mixer/torque", json.dumps({"value": [1, 2]}).encode()),
           ("plant/line1/mixer/torque", json.dumps({"value": 1.0, "ts": "yesterday"}).encode())]
    client = publisher(mosquitto_url)
    try:
        publish_all(client, good + [alarm] + bad + good[:50])  # the last 50 are redeliveries (duplicates)
        assert wait_for(lambda: adapter.stats["acknowledged"] == len(good) + 1 + len(bad) + 50)
    finally:
        client.disconnect()
        adapter.stop()
        pipeline.close()

    readings = TopicReader(settings, READINGS).read_until(300)
    ids = [r.value["id"] for r in readings]
    assert len(ids) == 300 and len(set(ids)) == 300
    first = next(r for r in readings if r.value["observed_at"] == T0)
    assert first.key == "line1-mixer"
    assert first.value["metric"] == "torque" and first.value["value"] == 40.0 and first.value["unit"] == "NU"
    assert first.value["source"]["protocol"] == "mqtt"
    assert first.value["source"]["address"] == "plant/line1/mixer/torque"
    assert first.value["source"]["position"] is not None
    assert first.value["source"]["received_by"] == "ingest-test"
    assert first.value["attributes"]["seq"] == "1"

    alarms = TopicReader(settings, ALARMS).read_until(1)
    assert [(a.value["alarm_type"], a.value["action"], a.value["severity"]) for a in alarms] == [
        ("zone1_high", "raise", "critical")]

    letters = TopicReader(settings, DEAD_LETTERS, decode=False).read_until(3)
    assert sorted(d.value for d in letters) == sorted(p for _, p in bad)
    reasons = " | ".join(d.headers["__connect.errors.exception.message"] for d in letters)
    assert "not JSON" in reasons and "value" in reasons and "ts" in reasons
    assert all(d.headers["lineguard.source.address"] == "plant/line1/mixer/torque" for d in letters)
    assert pipeline.metrics.duplicates.labels("mqtt")._value.get() >= 50


def test_kafka_outage_leaves_messages_unacknowledged_at_the_broker_until_it_recovers(
        ingest_settings, pausable_kafka, mosquitto_url):
    settings = ingest_settings(kafka_bootstrap=pausable_kafka.bootstrap)
    pipeline, adapter = start_adapter(settings, mosquitto_url, "ingest-outage",
                                      **{"message.timeout.ms": 1500, "request.timeout.ms": 1000})
    client = publisher(mosquitto_url)
    try:
        publish_all(client, [reading_message(i) for i in range(20)])
        assert wait_for(lambda: adapter.stats["acknowledged"] == 20)
        pausable_kafka.pause()
        publish_all(client, [reading_message(i) for i in range(20, 120)])
        time.sleep(3.0)  # longer than message.timeout.ms: deliveries fail and are retried
        assert adapter.stats["acknowledged"] == 20, "a message was acknowledged while Kafka was down"
        assert adapter.pending() == 100
        assert adapter.stats["delivery_failures"] > 0
        pausable_kafka.resume()
        assert wait_for(lambda: adapter.stats["acknowledged"] == 120, timeout=30)
        assert adapter.pending() == 0
    finally:
        pausable_kafka.resume()
        client.disconnect()
        adapter.stop()
        pipeline.close()
    readings = TopicReader(settings, READINGS).read_until(120)
    observed = {r.value["observed_at"] for r in readings}
    assert observed == {T0 + i * 1000 for i in range(120)}


def test_ingest_killed_while_kafka_is_down_loses_nothing_the_broker_redelivers_after_restart(
        ingest_settings, pausable_kafka, mosquitto_url):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    settings = ingest_settings(kafka_bootstrap=pausable_kafka.bootstrap)
    env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix, "LINEGUARD_HTTP_PORT": "0",
           "LINEGUARD_MQTT_URL": mosquitto_url, "LINEGUARD_MQTT_CLIENT_ID": "ingest-killed",
           "LINEGUARD_SPARKPLUG_ENABLED": "false", "LINEGUARD_LOG_LEVEL": "WARNING"}
    env.pop("LINEGUARD_SFTP_SOURCES_FILE", None)
    root = Path(__file__).resolve().parents[3]

    def start(port: int = 0) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=root,
                                env={**env, "LINEGUARD_HTTP_PORT": str(port)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready(port: int) -> bool:
        try:
            return http("GET", f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    client = publisher(mosquitto_url)
    first_port = free_port()
    first = start(first_port)
    second = None
    try:
        # Ready = subscribed: the persistent session exists from now on.
        assert wait_for(lambda: ready(first_port), timeout=60), "ingest did not become ready"
        pausable_kafka.pause()
        publish_all(client, [reading_message(i) for i in range(60)])
        time.sleep(1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        pausable_kafka.resume()
        port = free_port()
        second = start(port)
        readings = TopicReader(settings, READINGS).read_until(60, timeout=40)

        def redelivered() -> float:
            try:
                text = http("GET", f"http://127.0.0.1:{port}/metrics", timeout=2)[1]["raw"]
            except OSError:
                return 0.0
            lines = [line for line in text.splitlines()
                     if line.startswith('lineguard_ingest_messages_received_total{adapter="mqtt"}')]
            return float(lines[0].split()[-1]) if lines else 0.0

        # The restarted process got them again from the broker's session (they were never acknowledged).
        assert wait_for(lambda: redelivered() >= 60, timeout=40)
    finally:
        pausable_kafka.resume()
        client.disconnect()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
    assert {r.value["observed_at"] for r in readings} == {T0 + i * 1000 for i in range(60)}
