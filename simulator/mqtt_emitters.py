"""MQTT emitters (paho-mqtt): plain JSON readings and alarms, and the oven controller's Sparkplug B edge node.

JSON readings, QoS 1, topic `plant/<line>/<machine>/<metric>`:

    {"device": "line1-mixer", "line": "line1", "machine": "mixer", "metric": "torque", "value": 47.91,
     "unit": "NU", "ts": "2026-11-29T12:00:02.000Z", "seq": 17}

Alarms, QoS 1, topic `plant/<line>/<machine>/alarms` (raise and clear; `alarm_id` is stable per condition):

    {"device": "line1-mixer", "line": "line1", "machine": "mixer", "alarm_id": "line1-mixer:torque_low",
     "alarm": "torque_low", "state": "raise", "severity": "warning", "value": 36.2, "limit": 38.0,
     "message": "...", "ts": "..."}

`seq` counts messages per device from 1, so a consumer can see gaps; `ts` is the simulated instant.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from lineguard import sparkplug as spb
from lineguard.logs import event
from simulator.model import Alarm, AlarmTracker, ControlError, CookieLine, Reading, StepEvents

log = logging.getLogger("simulator.mqtt")


def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # queued while disconnected: not sent yet
        return False


class PahoConnection:
    """A paho client on its own network thread, with connect/drain/close as coroutines."""

    def __init__(self, host: str, port: int, client_id: str, username: str | None = None,
                 password: str | None = None, keepalive: int = 30) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if username:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(20000)  # bounded memory while the broker is away
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        self.on_connected: list[Any] = []  # callables run on the asyncio loop after each (re)connect
        self.on_disconnected: list[Any] = []  # callables run on paho's thread, before it reconnects
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self.stats: Counter[str] = Counter()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.stats["connect_refused"] += 1
            return
        self.stats["connects"] += 1
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._connected_on_loop)

    def _connected_on_loop(self) -> None:
        self.connected.set()
        for callback in self.on_connected:
            callback()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        for callback in self.on_disconnected:
            callback()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.connected.clear)

    async def connect(self, wait_s: float = 3.0) -> bool:
        """Start connecting; paho keeps retrying in the background if the broker is not there yet."""
        self.loop = asyncio.get_running_loop()
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        try:
            await asyncio.wait_for(self.connected.wait(), wait_s)
            return True
        except TimeoutError:
            event(log, "mqtt_not_connected_yet", logging.WARNING, broker=f"{self.host}:{self.port}",
                  client_id=self.client._client_id.decode())
            return False

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        # While disconnected paho queues QoS 1 messages (up to max_queued_messages) and sends them on reconnect.
        if info.rc == mqtt.MQTT_ERR_SUCCESS or (qos > 0 and info.rc == mqtt.MQTT_ERR_NO_CONN):
            self.stats["published"] += 1
            if qos > 0:
                self._pending.append(info)
                if len(self._pending) > 2000:
                    self._pending = [i for i in self._pending if not _acknowledged(i)]
        else:
            self.stats["dropped"] += 1
            if self.stats["dropped"] in (1, 100) or self.stats["dropped"] % 10000 == 0:
                event(log, "mqtt_publish_dropped", logging.WARNING, topic=topic, rc=info.rc,
                      dropped=self.stats["dropped"])

    def unacked(self) -> int:
        self._pending = [i for i in self._pending if not _acknowledged(i)]
        return len(self._pending)

    async def drain(self, timeout_s: float = 5.0) -> int:
        """Wait for the broker to acknowledge every QoS 1 message; returns how many are still unacknowledged."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.unacked() and asyncio.get_running_loop().time() < deadline and self.connected.is_set():
            await asyncio.sleep(0.02)
        return self.unacked()

    async def close(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


def _json_machines(sim: CookieLine) -> list[str]:
    """Machines that speak plain MQTT JSON: no other protocol, and every sensor is the machine's own device."""
    out = []
    for machine in sim.line.machines.values():
        own = f"{sim.line.id}-{machine.id}"
        if machine.protocol is None and machine.sensors and all(s.device == own for s in machine.sensors):
            out.append(machine.id)
    return out


class MqttJsonEmitter:
    name = "mqtt-json"

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, interval_s: float = 2.0,
                 client_id: str | None = None, username: str | None = None, password: str | None = None,
                 topic_root: str = "plant") -> None:
        self.host, self.port, self.interval_s, self.topic_root = host, port, interval_s, topic_root
        self._client_id, self._username, self._password = client_id, username, password
        self.connection: PahoConnection | None = None
        self.machines: list[str] = []
        self.alarms: AlarmTracker | None = None
        self._seq: Counter[str] = Counter()
        self._next_s = 0.0

    async def start(self, sim: CookieLine) -> None:
        self.machines = _json_machines(sim)
        self.alarms = AlarmTracker(sim.line)
        self.connection = PahoConnection(self.host, self.port, self._client_id or f"{sim.line.id}-sim-json",
                                         self._username, self._password)
        await self.connection.connect()
        self._next_s = sim.now_s + self.interval_s

    def reading_message(self, sim: CookieLine, reading: Reading) -> tuple[str, dict[str, Any]]:
        self._seq[reading.device] += 1
        topic = f"{self.topic_root}/{sim.line.id}/{reading.machine}/{reading.metric}"
        return topic, {"device": reading.device, "line": sim.line.id, "machine": reading.machine,
                       "metric": reading.metric, "value": reading.value, "unit": reading.unit,
                       "ts": sim.clock.iso(reading.sim_s), "seq": self._seq[reading.device]}

    def alarm_message(self, sim: CookieLine, alarm: Alarm) -> tuple[str, dict[str, Any]]:
        topic = f"{self.topic_root}/{sim.line.id}/{alarm.machine}/alarms"
        return topic, {"device": alarm.device, "line": sim.line.id, "machine": alarm.machine,
                       "alarm_id": f"{alarm.device}:{alarm.alarm}", "alarm": alarm.alarm, "state": alarm.state,
                       "severity": alarm.severity, "value": alarm.value, "limit": alarm.limit,
                       "message": alarm.message, "ts": sim.clock.iso(alarm.sim_s)}

    async def on_tick(self, sim: CookieLine, events: StepEvents) -> None:
        if sim.now_s + 1e-9 < self._next_s or self.connection is None or self.alarms is None:
            return
        self._next_s += self.interval_s
        readings = sim.readings(self.machines)
        for reading in readings:
            topic, body = self.reading_message(sim, reading)
            self.connection.publish(topic, json.dumps(body, separators=(",", ":")), qos=1)
        for alarm in self.alarms.update(readings):
            topic, body = self.alarm_message(sim, alarm)
            self.connection.publish(topic, json.dumps(body, separators=(",", ":")), qos=1)
            event(log, "alarm", machine=alarm.machine, alarm=alarm.alarm, state=alarm.state,
                  severity=alarm.severity, value=alarm.value, sim_time=body["ts"])

    async def stop(self, sim: CookieLine) -> None:
        if self.connection is not None:
            left = await self.connection.drain()
            if left:
                event(log, "mqtt_unacknowledged_at_stop", logging.WARNING, count=left)
            await self.connection.close()


class SparkplugEmitter:
    """The oven controller as a Sparkplug B edge node (group = site id, edge node = "<line>-oven").

    NBIRTH on every (re)connect and on a Rebirth command: seq 0, every metric with an alias, bdSeq matching the
    will. NDATA: only metrics that moved past their deadband since they were last reported, by alias. NDEATH:
    the MQTT will (the broker sends it when the connection dies), and published explicitly on a clean stop.
    """

    name = "sparkplug"
    DEADBANDS = {"CEL": 0.5, "P1": 1.0, "2X": 0.02}

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, group_id: str | None = None,
                 machine_id: str = "oven", sample_s: float = 1.0, username: str | None = None,
                 password: str | None = None, bd_seq: int = 0) -> None:
        self.host, self.port, self.group_id, self.machine_id, self.sample_s = host, port, group_id, machine_id, sample_s
        self._username, self._password = username, password
        self.bd_seq = bd_seq % 256
        self.edge_node_id = ""
        self.seq = spb.Sequence()
        self.connection: PahoConnection | None = None
        self.sim: CookieLine | None = None
        self.aliases: dict[str, int] = {}
        self.setpoint_metrics: dict[str, str] = {}  # metric name -> setpoint parameter (writable by NCMD)
        self.datatypes: dict[str, spb.DataType] = {}
        self.units: dict[str, str | None] = {}
        self.last_sent: dict[str, Any] = {}
        self.alarms: AlarmTracker | None = None
        self.alarm_state: dict[str, bool] = {}
        self.births = 0
        self.rng = np.random.default_rng(0)
        self._born = False
        self._next_s = 0.0

    # --- metric catalogue ---

    def _catalogue(self, sim: CookieLine) -> None:
        machine = sim.line.machines[self.machine_id]
        names: list[tuple[str, spb.DataType, str | None]] = []
        for sensor in machine.sensors:
            kind = spb.DataType.String if sensor.kind == "state" else spb.DataType.Double
            names.append((sensor.metric, kind, sensor.unit))
        sensor_names = {s.metric for s in machine.sensors}
        for parameter, setpoint in machine.setpoints.items():
            name = parameter if parameter not in sensor_names else f"{parameter}_setpoint"
            names.append((name, spb.DataType.Double, setpoint.unit))
            self.setpoint_metrics[name] = parameter
        names.append(("state", spb.DataType.String, None))
        for sensor in machine.sensors:
            if sensor.normal is not None:
                for side in ("high", "low"):
                    names.append((f"Alarms/{sensor.metric}_{side}", spb.DataType.Boolean, None))
        self.aliases = {name: index for index, (name, _, _) in enumerate(names, start=1)}
        self.datatypes = {name: kind for name, kind, _ in names}
        self.units = {name: unit for name, _, unit in names}

    def current_values(self, sim: CookieLine) -> dict[str, Any]:
        machine = sim.line.machines[self.machine_id]
        runtime = sim.machines[self.machine_id]
        readings = sim.readings([self.machine_id], rng=self.rng)
        values: dict[str, Any] = {r.metric: r.value for r in readings}
        sensor_names = {s.metric for s in machine.sensors}
        for parameter in machine.setpoints:
            name = parameter if parameter not in sensor_names else f"{parameter}_setpoint"
            values[name] = runtime.setpoints[parameter]
        values["state"] = runtime.state
        if self.alarms is not None:
            for alarm in self.alarms.update(readings):
                self.alarm_state[alarm.alarm] = alarm.state == "raise"
        for name in self.aliases:
            if name.startswith("Alarms/"):
                values[name] = self.alarm_state.get(name[len("Alarms/"):], False)
        return values

    # --- messages ---

    def _topic(self, kind: str) -> str:
        return spb.topic(self.group_id or "", kind, self.edge_node_id)

    def death_payload(self) -> bytes:
        assert self.sim is not None
        return spb.encode_payload([spb.Metric(spb.BDSEQ_METRIC, self.bd_seq, spb.DataType.Int64)],
                                  self.sim.clock.epoch_ms(), seq=None)

    def birth(self) -> None:
        """Publish NBIRTH: seq 0, bdSeq, Rebirth control and every metric with its alias and current value."""
        if self.sim is None or self.connection is None:
            return
        sim = self.sim
        values = self.current_values(sim)
        now_ms = sim.clock.epoch_ms()
        metrics = [spb.Metric(spb.BDSEQ_METRIC, self.bd_seq, spb.DataType.Int64),
                   spb.Metric(spb.REBIRTH_METRIC, False, spb.DataType.Boolean)]
        for name, alias in self.aliases.items():
            unit = self.units.get(name)
            metrics.append(spb.Metric(name, values.get(name), self.datatypes[name], alias=alias, timestamp_ms=now_ms,
                                      properties={"engUnit": unit} if unit else {}))
        self.connection.publish(self._topic("NBIRTH"), spb.encode_payload(metrics, now_ms, self.seq.reset()), qos=0)
        self.last_sent = values
        self.births += 1
        self._born = True
        event(log, "sparkplug_birth", edge_node=self.edge_node_id, bd_seq=self.bd_seq, metrics=len(metrics))

    def _data(self, sim: CookieLine) -> None:
        values = self.current_values(sim)
        now_ms = sim.clock.epoch_ms()
        changed = []
        for name, value in values.items():
            if name not in self.aliases:
                continue
            previous = self.last_sent.get(name)
            if isinstance(value, float) and isinstance(previous, float):
                if abs(value - previous) < self.DEADBANDS.get(self.units.get(name) or "", 0.1):
                    continue
            elif value == previous:
                continue
            changed.append(spb.Metric(None, value, self.datatypes[name], alias=self.aliases[name],
                                      timestamp_ms=now_ms))
            self.last_sent[name] = value
        if changed:
            payload = spb.encode_payload(changed, now_ms, self.seq.next())
            self.connection.publish(self._topic("NDATA"), payload, qos=0)  # type: ignore[union-attr]

    # --- commands ---

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            payload = spb.decode_payload(message.payload)
        except spb.SparkplugError as exc:
            event(log, "sparkplug_bad_command", logging.WARNING, topic=message.topic, error=str(exc))
            return
        if self.connection and self.connection.loop:
            self.connection.loop.call_soon_threadsafe(self.command, payload.metrics)

    def command(self, metrics: list[spb.Metric]) -> list[dict[str, Any]]:
        """Act on an NCMD: Rebirth, or writes to setpoint metrics (by name or alias), within the plant's limits."""
        results: list[dict[str, Any]] = []
        names_by_alias = {alias: name for name, alias in self.aliases.items()}
        for metric in metrics:
            name = metric.name or names_by_alias.get(metric.alias or -1)
            if name == spb.REBIRTH_METRIC:
                if metric.value is True:
                    event(log, "sparkplug_rebirth_requested", edge_node=self.edge_node_id)
                    self.birth()
                continue
            parameter = self.setpoint_metrics.get(name or "")
            if parameter is None or self.sim is None:
                event(log, "sparkplug_command_ignored", logging.WARNING, metric=name or metric.alias,
                      reason="not a writable metric")
                continue
            try:
                change = self.sim.set_setpoint(self.machine_id, parameter, metric.value, source="sparkplug",
                                               reason="NCMD")
            except ControlError as refused:
                event(log, "sparkplug_write_refused", logging.WARNING, metric=name, value=metric.value,
                      reason=refused.reason)
                continue
            event(log, "setpoint_changed", machine=self.machine_id, parameter=parameter,
                  previous=change["previous"], value=change["value"], source="sparkplug")
            results.append(change)
        return results

    def _after_connect(self) -> None:
        assert self.connection is not None
        self.connection.client.subscribe(self._topic("NCMD"), qos=1)
        self.birth()

    def _after_disconnect(self) -> None:
        # The next session gets a new bdSeq, and its will must carry it (the spec ties NDEATH to its session).
        self.bd_seq = (self.bd_seq + 1) % 256
        assert self.connection is not None
        self.connection.client.will_set(self._topic("NDEATH"), self.death_payload(), qos=1, retain=False)
        self._born = False

    # --- emitter interface ---

    async def start(self, sim: CookieLine) -> None:
        self.sim = sim
        # Its own noise stream: births come at moments set by the broker, and must not shift the other emitters.
        self.rng = np.random.default_rng((sim.seed, 0x5B))
        self.group_id = self.group_id or sim.plant.site_id
        self.edge_node_id = f"{sim.line.id}-{self.machine_id}"
        self.alarms = AlarmTracker(sim.line)
        self._catalogue(sim)
        self.connection = PahoConnection(self.host, self.port, self.edge_node_id, self._username, self._password)
        self.connection.client.will_set(self._topic("NDEATH"), self.death_payload(), qos=1, retain=False)
        self.connection.client.on_message = self._on_message
        self.connection.on_connected.append(self._after_connect)
        self.connection.on_disconnected.append(self._after_disconnect)
        self._next_s = sim.now_s
        await self.connection.connect()

    async def on_tick(self, sim: CookieLine, events: StepEvents) -> None:
        if sim.now_s + 1e-9 < self._next_s:
            return
        self._next_s += self.sample_s
        if self._born and self.connection is not None and self.connection.connected.is_set():
            self._data(sim)

    async def stop(self, sim: CookieLine) -> None:
        if self.connection is None:
            return
        if self.connection.connected.is_set():
            # A clean stop publishes the death certificate itself; paho's DISCONNECT discards the will.
            self.connection.publish(self._topic("NDEATH"), self.death_payload(), qos=1)
            await self.connection.drain()
        self.connection.on_disconnected.clear()
        await self.connection.close()
