"""The simulator's own emitters (MQTT JSON, Sparkplug B oven, ChirpStack and TTS webhooks, SFTP batch reports)
against a running ingest: every reading the simulator emits arrives on the raw topics once, with its source."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from ingest_helpers import PASSWORD, RunningService, SftpServer, TopicReader

from lineguard import sparkplug as spb
from lineguard.plant import default_plant_path, load_plant
from services.ingest.pipeline import ALARMS, READINGS
from services.ingest.service import IngestService
from simulator.clock import SimClock
from simulator.emitters import Runner
from simulator.lorawan_webhooks import LoRaWANWebhookEmitter
from simulator.model import CookieLine
from simulator.mqtt_emitters import MqttJsonEmitter, SparkplugEmitter
from simulator.scenarios import load_scenario
from simulator.sftp import SftpEmitter

pytestmark = pytest.mark.integration

PLANT = load_plant(default_plant_path())
EMBEDDED_SOURCES = Path(__file__).resolve().parents[3] / "services" / "ingest" / "sftp-sources.embedded.yaml"
SECRET = "sim-webhook-secret"
SIM_SECONDS = 600


class Recorder:
    """Everything the simulator put on the broker, as a second subscriber saw it."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-recorder")
        self.client.on_message = lambda c, u, m: self._keep(m)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe([("plant/#", 1), ("spBv1.0/bakery1/#", 0)])
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert ready.wait(5)

    def _keep(self, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sparkplug_expected(messages: list[tuple[str, bytes]]) -> set[tuple[str, int]]:
    """(metric, timestamp) of every oven value the edge node published, aliases resolved from its births."""
    names: dict[int, str] = {}
    out = set()
    for topic, payload in messages:
        kind = topic.split("/")[2] if topic.startswith("spBv1.0/") else None
        if kind not in ("NBIRTH", "NDATA"):
            continue
        decoded = spb.decode_payload(payload)
        if kind == "NBIRTH":
            names = {m.alias: m.name for m in decoded.metrics if m.alias is not None}
        for metric in decoded.metrics:
            name = metric.name or names.get(metric.alias)
            if name in (spb.BDSEQ_METRIC, spb.REBIRTH_METRIC) or name.startswith("Alarms/"):
                continue
            out.add((name, metric.timestamp_ms))
    return out


def test_everything_the_simulator_emits_arrives_once_with_its_source(ingest_settings, mosquitto_url, tmp_path,
                                                                     monkeypatch):
    host, port = mosquitto_url.removeprefix("mqtt://").split(":")
    server = SftpServer(tmp_path / "plc")
    sources = yaml.safe_load(EMBEDDED_SOURCES.read_text())
    sources["sources"][0].update(port=server.port, username="lineguard", password_env="E2E_SFTP_PASSWORD")
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(sources))
    settings = ingest_settings(mqtt_url=mosquitto_url, mqtt_client_id="ingest-e2e", sparkplug_enabled=True,
                               sparkplug_host_id="ingest-e2e", chirpstack_secret=SECRET, tts_secret=SECRET,
                               sftp_sources_file=tmp_path / "sources.yaml", sftp_ledger=tmp_path / "ledger.jsonl",
                               sftp_poll_interval_s=0.2, sftp_quiet_period_s=0.3)
    monkeypatch.setenv("E2E_SFTP_PASSWORD", PASSWORD)
    running = RunningService(IngestService(settings))
    recorder = Recorder(mosquitto_url)
    service = running.service
    try:
        deadline = time.monotonic() + 10
        while not (service.mqtt.ever_subscribed and service.sparkplug.ever_subscribed):
            assert time.monotonic() < deadline, "ingest did not subscribe"
            time.sleep(0.05)
        sim = CookieLine(PLANT, seed=4, clock=SimClock(speed=0), batch_period_s=120,
                         scenario=load_scenario("mixer_torque_loss", PLANT.lines["line1"]))
        lorawan = LoRaWANWebhookEmitter(f"{running.url}/lorawan/chirpstack", f"{running.url}/lorawan/tts",
                                        interval_s=60, headers={"X-Lineguard-Secret": SECRET})
        sftp = SftpEmitter(server.root, port=None)
        emitters = [MqttJsonEmitter(host, int(port), interval_s=2.0, client_id="e2e-json"),
                    SparkplugEmitter(host, int(port)), lorawan, sftp]

        async def simulate() -> None:
            runner = Runner(sim, emitters, progress_every_s=10_000)
            await runner.start()
            await runner.run(SIM_SECONDS)
            await runner.stop()

        asyncio.run(simulate())
        files = len(sftp.written)
        done = server.root / "done"
        deadline = time.monotonic() + 20
        while not (done.exists() and len(list(done.iterdir())) == files and service.mqtt.pending() == 0):
            assert time.monotonic() < deadline, "ingest did not finish"
            time.sleep(0.1)
        time.sleep(0.5)  # the last QoS 0 Sparkplug messages
    finally:
        running.stop()
        recorder.close()
        server.close()

    readings = [r.value for r in TopicReader(settings, READINGS).read_until(1, settle=2.0)]
    alarms = [a.value for a in TopicReader(settings, ALARMS).read_until(0, settle=0.5)]
    ids = [r["id"] for r in readings] + [a["id"] for a in alarms]
    assert len(ids) == len(set(ids)), "a record was produced twice"
    by_protocol: dict[str, list[dict]] = {}
    for record in readings:
        by_protocol.setdefault(record["source"]["protocol"], []).append(record)

    json_messages = [(t, p) for t, p in recorder.messages if t.startswith("plant/")]
    sent_readings = [json.loads(p) for t, p in json_messages if not t.endswith("/alarms")]
    sent_alarms = [json.loads(p) for t, p in json_messages if t.endswith("/alarms")]
    assert len(sent_readings) > 1000
    got = {(r["device"], r["metric"], r["value"], r["attributes"]["seq"]) for r in by_protocol["mqtt"]}
    assert got == {(m["device"], m["metric"], m["value"], str(m["seq"])) for m in sent_readings}
    assert len(by_protocol["mqtt"]) == len(sent_readings)
    assert sent_alarms, "the scenario raises the mixer's torque alarm"
    assert sorted((a["alarm_type"], a["action"]) for a in alarms if a["source"]["protocol"] == "mqtt") == sorted(
        (m["alarm"], m["state"]) for m in sent_alarms)

    oven = {(r["metric"], r["observed_at"]) for r in by_protocol["sparkplug"] if r["value"] is not None}
    assert oven == sparkplug_expected(recorder.messages) and oven
    assert all(r["device"] == "line1-oven" for r in by_protocol["sparkplug"])

    uplinks = lorawan.stats["chirpstack_sent"]
    assert uplinks == SIM_SECONDS // 60 - 1 or uplinks == SIM_SECONDS // 60
    assert lorawan.stats["tts_sent"] == uplinks and not lorawan.stats["chirpstack_failed"]
    for protocol in ("chirpstack", "tts"):
        assert len(by_protocol[protocol]) == 4 * uplinks  # temperature, humidity, battery_mv, status
        assert {r["device"] for r in by_protocol[protocol]} == {"a84041000181c061"}

    assert files >= 4
    packaging = by_protocol["sftp"]
    assert len(packaging) == 3 * files
    assert {r["source"]["address"] for r in packaging} == {f"/reports/{p.name}" for p in sftp.written}
    assert {r["metric"] for r in packaging} == {"packs", "rejects", "mean_pack_weight"}
