"""The LoRaWAN webhook spool against a real broker and real processes: Kafka is killed, ChirpStack and TTS uplinks
keep coming (and are answered 200 within 2 s, as network servers never retry), ingest is SIGKILLed, then both come
back: every uplink sent during the outage is in Kafka exactly once, and none delivered before it comes again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polling
import pytest
from ingest_helpers import TopicReader, http

from lineguard.catalog import wait_for_broker
from lineguard.embedded import free_port, start_listening, tansu_command
from lineguard.lorawan import decode_environment, encode_environment
from services.ingest.pipeline import READINGS
from simulator.lorawan_webhooks import LoRaWANWebhookEmitter

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SECRET = "spool-secret"
HOOK = {"X-Lineguard-Secret": SECRET}
EUI = "a84041000181c061"


def start_tansu(port: int) -> subprocess.Popen:
    log = tempfile.NamedTemporaryFile(prefix="tansu-spool-", suffix=".log", delete=False).name  # noqa: SIM115
    proc = start_listening(tansu_command(port), port, "tansu", log_path=log)
    wait_for_broker(f"127.0.0.1:{port}", timeout=20)
    return proc


def bodies(f_cnt: int) -> tuple[dict, dict]:
    em = LoRaWANWebhookEmitter()
    em.dev_eui, em.f_cnt = EUI, f_cnt
    payload = encode_environment(20.0 + f_cnt / 10, 40.0, 3600)
    radio = {"id": f"{f_cnt:08x}-6f1c-4000-8000-1f0e00000000", "uplink_id": 100 + f_cnt, "rssi": -70, "snr": 7.5,
             "channel": 1, "time": f"2026-11-29T12:{f_cnt % 60:02d}:00.000Z", "session_key_id": "AXBS"}
    return em.chirpstack_body(payload, decode_environment(payload), radio), \
        em.tts_body(payload, decode_environment(payload), radio)


class Ingest:
    def __init__(self, env: dict[str, str], port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "services.ingest"], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert polling.wait_for(lambda: self.ready(), timeout=60), "ingest did not become ready"

    def ready(self) -> bool:
        try:
            return http("GET", self.url + "/readyz", timeout=1)[0] == 200
        except OSError:
            return False

    def send(self, f_cnt: int, accepted: int = 4) -> list[float]:
        chirpstack, tts = bodies(f_cnt)
        took = []
        for path, body in (("/lorawan/chirpstack?event=up", chirpstack), ("/lorawan/tts", tts)):
            started = time.monotonic()
            status, answer = http("POST", self.url + path, body, HOOK, timeout=10)
            took.append(time.monotonic() - started)
            assert status == 200 and answer["accepted"] == accepted, (path, status, answer)
        return took

    def metric(self, name: str) -> float:
        text = http("GET", self.url + "/metrics")[1]["raw"]
        line = next(li for li in text.splitlines() if li.startswith(name + " "))
        return float(line.split()[1])


def test_kafka_killed_uplinks_spooled_ingest_sigkilled_both_restarted_every_uplink_once(ingest_settings, tmp_path):
    kafka_port, http_port = free_port(), free_port()
    tansu = start_tansu(kafka_port)
    bootstrap = f"127.0.0.1:{kafka_port}"
    settings = ingest_settings(kafka_bootstrap=bootstrap)
    env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": bootstrap, "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix,
           "LINEGUARD_HTTP_PORT": str(http_port), "LINEGUARD_CHIRPSTACK_SECRET": SECRET,
           "LINEGUARD_TTS_SECRET": SECRET, "LINEGUARD_WEBHOOK_SPOOL_DIR": str(tmp_path / "spool"),
           "LINEGUARD_SPARKPLUG_ENABLED": "false", "LINEGUARD_LOG_LEVEL": "WARNING"}
    env.pop("LINEGUARD_MQTT_URL", None)
    first = second = None
    try:
        first = Ingest(env, http_port)
        first.send(0)  # Kafka up: spooled and delivered
        assert polling.wait_for(lambda: first.metric("lineguard_ingest_webhook_spool_entries") == 0, timeout=20)
        assert len(TopicReader(settings, READINGS).read_until(8)) == 8

        tansu.kill()
        tansu.wait()
        outage = list(range(1, 16))
        took = [t for f_cnt in outage for t in first.send(f_cnt)]
        assert max(took) < 2.0, f"slowest webhook answer {max(took):.2f} s while Kafka was down"
        assert first.metric("lineguard_ingest_webhook_spool_entries") == 2 * len(outage)
        assert first.metric("lineguard_ingest_webhook_spool_oldest_age_seconds") > 0
        first.send(3, accepted=0)  # a repeated uplink id while spooled: a duplicate, not a second entry
        assert first.metric("lineguard_ingest_webhook_spool_entries") == 2 * len(outage)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)

        tansu = start_tansu(kafka_port)  # memory storage: an empty broker, so only what is replayed is there
        restarted = ingest_settings(kafka_bootstrap=bootstrap, topic_prefix=settings.topic_prefix)
        second = Ingest(env, http_port)
        assert polling.wait_for(lambda: second.metric("lineguard_ingest_webhook_spool_entries") == 0, timeout=40)
        expected = 2 * len(outage) * 4
        readings = TopicReader(restarted, READINGS).read_until(expected, timeout=30, settle=1.5)
        ids = [r.value["id"] for r in readings]
        assert len(set(ids)) == expected, f"{expected - len(set(ids))} readings missing"
        assert len(ids) == expected, f"{len(ids) - len(set(ids))} readings produced twice"
        positions = {(r.value["source"]["protocol"], r.value["source"]["position"]) for r in readings}
        assert positions == {(p, str(f)) for p in ("chirpstack", "tts") for f in outage}
        by_protocol = [r.value["source"]["position"] for r in readings if r.value["source"]["protocol"] == "tts"
                       and r.value["metric"] == "temperature"]
        assert by_protocol == [str(f) for f in outage], "replayed out of order"
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(20) == 0
    finally:
        for ingest in (first, second):
            if ingest is not None and ingest.proc.poll() is None:
                ingest.proc.kill()
        tansu.kill()
        tansu.wait()
