"""MQTT emitters against a real Mosquitto: JSON readings and alarms, and the Sparkplug B oven edge node.

Sparkplug payloads are decoded with classes that protoc (grpcio-tools) generates from the specification's
sparkplug_b.proto, not with lineguard.sparkplug, so the encoder is checked by an independent parser.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest

from lineguard.plant import default_plant_path, load_plant
from simulator.clock import SimClock
from simulator.emitters import Runner
from simulator.model import CookieLine
from simulator.mqtt_emitters import MqttJsonEmitter, SparkplugEmitter
from simulator.scenarios import load_scenario

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
PLANT = load_plant(default_plant_path())
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def spec_pb2(tmp_path_factory):
    """The spec's schema compiled by protoc into a Python module."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("sparkplug_pb2")
    here = Path(__file__).parent
    assert protoc.main(["protoc", f"-I{here}", f"--python_out={out}", str(here / "sparkplug_b.proto")]) == 0
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("sparkplug_b_pb2")
    finally:
        sys.path.remove(str(out))


class Recorder:
    """A paho subscriber that keeps every message it receives."""

    def __init__(self, url: str, topics: list[str]) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"recorder-{os.getpid()}-{id(self)}")
        self.client.on_message = lambda c, u, m: self._keep(m)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe([(t, 1) for t in topics])

    def _keep(self, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def __enter__(self) -> Recorder:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        assert self.ready.wait(5), "subscriber did not subscribe"
        return self

    def __exit__(self, *exc) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, predicate) -> list[mqtt.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if predicate(m)]

    async def wait_for(self, predicate, count: int = 1, timeout: float = 10.0) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.on(predicate)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {count} message(s); have {len(self.on(predicate))}")


def make_line(scenario: str, speed: float) -> CookieLine:
    return CookieLine(PLANT, seed=2, clock=SimClock(speed=speed), scenario=load_scenario(scenario, PLANT.lines["line1"]))


async def test_json_readings_and_alarms_reach_a_real_broker(mosquitto_url):
    host, port = urlsplit(mosquitto_url).hostname, urlsplit(mosquitto_url).port
    with Recorder(mosquitto_url, ["plant/#"]) as recorder:
        sim = make_line("mixer_torque_loss", speed=500)
        emitter = MqttJsonEmitter(host, port, interval_s=2.0)
        runner = Runner(sim, [emitter])
        await runner.start()
        await runner.run(500)
        await runner.stop()
        await recorder.wait_for(lambda m: m.topic == "plant/line1/mixer/torque", count=250)

    readings = recorder.on(lambda m: not m.topic.endswith("/alarms"))
    topics = {m.topic for m in readings}
    assert topics == {
        "plant/line1/mixer/temperature", "plant/line1/mixer/torque", "plant/line1/mixer/speed",
        "plant/line1/mixer/motor_current",
        "plant/line1/depositor/deposit_rate", "plant/line1/cooling-conveyor/speed",
        "plant/line1/cooling-conveyor/state", "plant/line1/cooling-conveyor/air_temperature",
        "plant/line1/detector/items_per_minute",
    }
    assert all(m.qos == 1 for m in readings)
    by_device: dict[str, list[int]] = {}
    for message in readings:
        body = json.loads(message.payload)
        _, line, machine, metric = message.topic.split("/")
        assert body["device"] == f"{line}-{machine}" and body["metric"] == metric and body["line"] == line
        assert isinstance(body["value"], str if metric == "state" else float)
        assert body["ts"].endswith("Z") and body["unit"] == PLANT.lines[line].machines[machine].sensor(metric).unit
        by_device.setdefault(body["device"], []).append(body["seq"])
    for seqs in by_device.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))  # QoS 1 delivered every message, none twice
    torque = [json.loads(m.payload)["value"] for m in readings if m.topic == "plant/line1/mixer/torque"]
    assert len(torque) == 250
    assert sum(torque[:100]) / 100 > 45 and sum(torque[-50:]) / 50 < 38  # the fault shows after 300 s

    alarms = [json.loads(m.payload) for m in recorder.on(lambda m: m.topic == "plant/line1/mixer/alarms")]
    assert alarms and all(m.qos == 1 for m in recorder.on(lambda m: m.topic.endswith("/alarms")))
    raised = [a for a in alarms if a["alarm"] == "torque_low" and a["state"] == "raise"]
    assert len(raised) == 1
    assert raised[0]["alarm_id"] == "line1-mixer:torque_low" and raised[0]["value"] < 38.0
    assert raised[0]["limit"] == 38.0 and raised[0]["severity"] in ("warning", "critical")


def metric_value(metric):
    return getattr(metric, metric.WhichOneof("value")) if metric.WhichOneof("value") else None


async def test_sparkplug_birth_data_rebirth_and_death(mosquitto_url, spec_pb2):
    host, port = urlsplit(mosquitto_url).hostname, urlsplit(mosquitto_url).port
    base = "spBv1.0/bakery1"
    with Recorder(mosquitto_url, [f"{base}/#"]) as recorder:
        sim = make_line("oven_zone_overheat", speed=150)
        emitter = SparkplugEmitter(host, port, bd_seq=7)
        runner = Runner(sim, [emitter])
        await runner.start()
        task = asyncio.create_task(runner.run())
        births = await recorder.wait_for(lambda m: m.topic == f"{base}/NBIRTH/line1-oven")
        await recorder.wait_for(lambda m: m.topic == f"{base}/NDATA/line1-oven", count=20)

        birth = spec_pb2.Payload()
        birth.ParseFromString(births[0].payload)
        assert birth.seq == 0 and birth.timestamp > 1_600_000_000_000
        by_name = {m.name: m for m in birth.metrics}
        assert by_name["bdSeq"].datatype == spec_pb2.Int64 and by_name["bdSeq"].long_value == 7
        assert by_name["Node Control/Rebirth"].datatype == spec_pb2.Boolean
        assert by_name["Node Control/Rebirth"].boolean_value is False
        oven = PLANT.lines["line1"].machines["oven"]
        for sensor in oven.sensors:
            metric = by_name[sensor.metric]
            assert metric.datatype == spec_pb2.Double and metric.HasField("alias") and metric.HasField("timestamp")
            assert dict(zip(metric.properties.keys, [v.string_value for v in metric.properties.values],
                            strict=True)) == {"engUnit": sensor.unit}
        assert by_name["zone2_setpoint"].double_value == 190.0 and by_name["belt_speed_setpoint"].double_value == 3.0
        assert by_name["state"].string_value == "running"
        aliases = [m.alias for m in birth.metrics if m.HasField("alias")]
        assert len(aliases) == len(set(aliases))
        name_of = {m.alias: m.name for m in birth.metrics if m.HasField("alias")}

        # Report by exception: NDATA by alias, seq counting up from the birth, only metrics that changed.
        data = []
        for message in recorder.on(lambda m: m.topic == f"{base}/NDATA/line1-oven")[:20]:
            payload = spec_pb2.Payload()
            payload.ParseFromString(message.payload)
            data.append(payload)
        assert [p.seq for p in data] == list(range(1, 21))
        assert all(m.alias in name_of and not m.HasField("name") for p in data for m in p.metrics)
        assert all(len(p.metrics) < len(name_of) for p in data)
        assert all(m.qos == 0 for m in recorder.on(lambda m: "/NDATA/" in m.topic))

        # The zone 2 overheat arrives as NDATA, with its alarm metric.
        await recorder.wait_for(lambda m: "/NDATA/" in m.topic and _has_value(spec_pb2, m, name_of,
                                "Alarms/zone2_temperature_high", True), timeout=15)

        # Rebirth on command: a fresh NBIRTH with seq 0 and the same bdSeq.
        command = spec_pb2.Payload()
        command.timestamp = int(time.time() * 1000)
        rebirth = command.metrics.add()
        rebirth.name, rebirth.datatype, rebirth.boolean_value = "Node Control/Rebirth", spec_pb2.Boolean, True
        recorder.client.publish(f"{base}/NCMD/line1-oven", command.SerializeToString(), qos=0)
        births = await recorder.wait_for(lambda m: m.topic == f"{base}/NBIRTH/line1-oven", count=2)
        second = spec_pb2.Payload()
        second.ParseFromString(births[1].payload)
        assert second.seq == 0
        assert {m.name: m for m in second.metrics}["bdSeq"].long_value == 7
        assert {m.name: metric_value(m) for m in second.metrics}["zone2_setpoint"] == 190.0

        runner.stop_event.set()
        await task
        await runner.stop()
        deaths = await recorder.wait_for(lambda m: m.topic == f"{base}/NDEATH/line1-oven")
    death = spec_pb2.Payload()
    death.ParseFromString(deaths[0].payload)
    assert [(m.name, m.long_value) for m in death.metrics] == [("bdSeq", 7)]
    assert not death.HasField("seq")


def _has_value(spec_pb2, message, name_of, name, value) -> bool:
    payload = spec_pb2.Payload()
    payload.ParseFromString(message.payload)
    return any(name_of.get(m.alias) == name and metric_value(m) == value for m in payload.metrics)


async def test_cli_run_killed_hard_leaves_its_death_certificate_via_the_will(mosquitto_url, spec_pb2, tmp_path):
    host, port = urlsplit(mosquitto_url).hostname, urlsplit(mosquitto_url).port
    base = "spBv1.0/bakery1"
    with Recorder(mosquitto_url, [f"{base}/#", "plant/#"]) as recorder:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulator.cli", "run", "--scenario", "normal_run", "--speed", "20",
             "--mqtt", f"{host}:{port}", "--api-port", "0", "--no-sftp", "--truth", str(tmp_path / "truth.jsonl")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "LINEGUARD_CONTROL_API_TOKEN": "t"})
        try:
            births = await recorder.wait_for(lambda m: m.topic == f"{base}/NBIRTH/line1-oven", timeout=20)
            await recorder.wait_for(lambda m: m.topic.startswith("plant/line1/mixer/"), count=3)
        finally:
            proc.send_signal(signal.SIGKILL)
            output = proc.communicate(timeout=10)[0]
        deaths = await recorder.wait_for(lambda m: m.topic == f"{base}/NDEATH/line1-oven", timeout=10)
    birth, death = spec_pb2.Payload(), spec_pb2.Payload()
    birth.ParseFromString(births[0].payload)
    death.ParseFromString(deaths[0].payload)
    born_bd = next(m.long_value for m in birth.metrics if m.name == "bdSeq")
    assert [(m.name, m.long_value) for m in death.metrics] == [("bdSeq", born_bd)]
    started = [json.loads(line) for line in output.splitlines() if '"simulation_started"' in line]
    assert started and started[0]["scenario"] == "normal_run" and started[0]["speed"] == 20.0


async def second_birth(recorder: Recorder, spec_pb2, base: str) -> list[mqtt.MQTTMessage]:
    """Wait for the edge node's next NBIRTH; should our subscriber have reconnected after it, ask for a rebirth
    (same session, same bdSeq) as a host application would."""
    command = spec_pb2.Payload()
    rebirth = command.metrics.add()
    rebirth.name, rebirth.datatype, rebirth.boolean_value = "Node Control/Rebirth", spec_pb2.Boolean, True
    deadline = time.monotonic() + 25
    while True:
        try:
            return await recorder.wait_for(lambda m: m.topic == f"{base}/NBIRTH/line1-oven", count=2, timeout=3)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            recorder.client.publish(f"{base}/NCMD/line1-oven", command.SerializeToString(), qos=1)


async def test_sparkplug_session_after_a_broker_restart_has_a_new_bdseq(tmp_path, spec_pb2):
    from lineguard.embedded import free_port, mosquitto_command, port_open

    port = free_port()
    command = mosquitto_command(port, tmp_path)
    if command is None:
        pytest.skip("mosquitto is not installed")

    def start_broker() -> subprocess.Popen:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            assert time.monotonic() < deadline and proc.poll() is None, "mosquitto did not start"
            time.sleep(0.05)
        return proc

    def bd_seq(message) -> int:
        payload = spec_pb2.Payload()
        payload.ParseFromString(message.payload)
        return next(m.long_value for m in payload.metrics if m.name == "bdSeq")

    broker = start_broker()
    base = "spBv1.0/bakery1"
    try:
        with Recorder(f"mqtt://127.0.0.1:{port}", [f"{base}/#"]) as recorder:
            sim = make_line("normal_run", speed=20)
            runner = Runner(sim, [SparkplugEmitter("127.0.0.1", port)])
            await runner.start()
            task = asyncio.create_task(runner.run())
            first = await recorder.wait_for(lambda m: m.topic == f"{base}/NBIRTH/line1-oven")
            broker.terminate()
            broker.wait(5)
            broker = start_broker()
            births = await second_birth(recorder, spec_pb2, base)
            runner.stop_event.set()
            await task
            await runner.stop()
            deaths = await recorder.wait_for(lambda m: m.topic == f"{base}/NDEATH/line1-oven")
    finally:
        broker.terminate()
        broker.wait(5)
    assert bd_seq(first[0]) == 0 and bd_seq(births[1]) == 1
    assert bd_seq(deaths[-1]) == 1  # the death certificate of the new session matches its birth
