"""Sparkplug B host application (Sparkplug 3.0): edge node and device births, data and deaths -> readings.

- Connects with its own MQTT client, a will on `spBv1.0/STATE/<host_id>` (`{"online": false, "timestamp": t}`,
  QoS 1, retained) where t is the time of that CONNECT (set again before every reconnect), subscribes at QoS 1 to
  `spBv1.0/<group>/#` and to its own STATE topic, then publishes `{"online": true, "timestamp": t}` (retained, the
  same t); a STATE on its own id saying offline (a retained will of an earlier session) is answered at once with
  online; a clean stop publishes the offline STATE itself.
- NBIRTH/DBIRTH: remember every metric's name, alias, datatype and unit (`engUnit` property), produce the values.
- NDATA/DDATA: resolve aliases from the births; a metric without a datatype (the spec says data messages SHOULD
  leave it out) is decoded with its birth's (an Int32 -6 is -6, not 4294967290); produce the values.
- Values: arrays (Int8Array ... DateTimeArray) become one reading per element, metric `<name>[i]` with attribute
  `index`; integers beyond 2^53 (UInt64, Int64) travel as exact decimal strings; bytes as hex.
- NDEATH (with the current bdSeq) / DDEATH: the node's (device's) metrics become stale: one reading per metric with
  value null and attribute `quality=stale`, stamped with the host's receive time (an NDEATH's own timestamp is the
  will's, set at CONNECT, so it would sort before the data it invalidates).
- The host itself losing the broker: it cannot see deaths any more, so every node's metrics become stale then,
  and every node must be born again (its next data asks for a Rebirth).
- Rebirth: on a seq gap, data before birth, or an unknown alias, publish NCMD `Node Control/Rebirth` = true (at
  most once per node every few seconds). Data that cannot be resolved is dead-lettered with the reason and the
  message's original payload bytes.
- `Alarms/<name>` boolean metrics become alarms on raw.alarms.v1 (raise on true, clear on false, on change).

Sparkplug data is QoS 0, so there is no broker-side acknowledgement to hold back; a record Kafka did not take is
produced again after a pause (in memory, bounded), and a lost session is repaired by the next birth.

Device ids: node metrics belong to the edge node id (`line1-oven`), device metrics to the device id. Ids:
`sparkplug:<group>/<node>[/<device>]:<metric>:<timestamp ms>`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from lineguard import sparkplug as spb
from lineguard.logs import event, get_logger
from services.ingest.mqtt_adapter import BrokerAddress, make_client
from services.ingest.parsing import InputError, check_value
from services.ingest.pipeline import DeadLetter, Emit, IngestPipeline, alarm, now_ms, reading, source

log = get_logger(__name__)

ALARM_PREFIX = "Alarms/"
REBIRTH_MIN_INTERVAL_S = 5.0
RETRY_S = 1.0
MAX_RETRY_RECORDS = 100000


@dataclass
class _Scope:
    """What the host knows of one edge node or device: born or not, and its metrics."""

    online: bool = False
    names_by_alias: dict[int, str] = field(default_factory=dict)
    datatypes: dict[str, int] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    alarm_states: dict[str, bool] = field(default_factory=dict)
    array_sizes: dict[str, int] = field(default_factory=dict)  # elements last seen per array metric


@dataclass
class _Node:
    group_id: str
    edge_node_id: str
    scope: _Scope = field(default_factory=_Scope)
    bd_seq: int | None = None
    last_seq: int | None = None
    devices: dict[str, _Scope] = field(default_factory=dict)
    last_rebirth_request: float = 0.0
    rebirths_requested: int = 0


@dataclass
class HostResult:
    """What one message turned into: records, dead letters and whether the node must be asked to rebirth."""

    records: list[Emit] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rebirth: str | None = None  # why


class SparkplugState:
    """The host's state machine, free of MQTT (so it can be tested and fuzzed alone)."""

    def __init__(self, received_by: str | None = None) -> None:
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.received_by = received_by

    def node(self, group_id: str, edge_node_id: str) -> _Node:
        key = (group_id, edge_node_id)
        if key not in self.nodes:
            self.nodes[key] = _Node(group_id, edge_node_id)
        return self.nodes[key]

    def handle(self, topic: str, payload: bytes, received_at: int) -> HostResult:
        result = HostResult()
        try:
            parsed = spb.parse_topic(topic)
        except spb.SparkplugError as exc:
            result.dead_letters.append(DeadLetter(payload, str(exc), "SparkplugError", "sparkplug", topic))
            return result
        if parsed.message_type in ("NCMD", "DCMD"):
            return result  # commands (ours included) are not telemetry
        try:
            decoded = spb.decode_payload(payload)
        except spb.SparkplugError as exc:
            result.dead_letters.append(DeadLetter(payload, str(exc), "SparkplugError", "sparkplug", topic))
            return result
        node = self.node(parsed.group_id, parsed.edge_node_id)
        kind = parsed.message_type
        position = None if decoded.seq is None else str(decoded.seq)

        def letter(reason: str) -> None:
            result.dead_letters.append(DeadLetter(payload, reason, "SparkplugStateError", "sparkplug", topic,
                                                  position))

        if kind == "NBIRTH":
            bd = decoded.metric(spb.BDSEQ_METRIC)
            node.bd_seq = int(bd.value) if bd is not None and isinstance(bd.value, int) else None
            node.scope = _Scope(online=True)
            node.devices = {}  # devices must be born again after their node's birth
            node.last_seq = decoded.seq
            if decoded.seq not in (0, None):
                result.rebirth = f"NBIRTH with seq {decoded.seq} (expected 0)"
            self._learn(node.scope, decoded.metrics)
            self._emit(result, node, None, node.scope, decoded, topic, received_at, position, payload)
            return result
        if kind == "NDEATH":
            bd = decoded.metric(spb.BDSEQ_METRIC)
            if bd is not None and node.bd_seq is not None and bd.value != node.bd_seq:
                return result  # the will of an older session: the current one is alive
            if node.scope.online:
                self._stale(result, node, None, node.scope, topic, received_at)
                for device_id, scope in node.devices.items():
                    if scope.online:
                        self._stale(result, node, device_id, scope, topic, received_at)
            node.scope.online = False
            for scope in node.devices.values():
                scope.online = False
            node.last_seq = None
            return result
        # Everything else is numbered in the node's one seq sequence.
        if not node.scope.online or node.last_seq is None:
            result.rebirth = f"{kind} before the node's birth"
            letter(f"{kind} from {parsed.group_id}/{parsed.edge_node_id} before its NBIRTH: cannot resolve it")
            return result
        if decoded.seq is None or decoded.seq != (node.last_seq + 1) % 256:
            result.rebirth = f"seq gap: {node.last_seq} -> {decoded.seq}"
        if decoded.seq is not None:
            node.last_seq = decoded.seq
        if kind == "NDATA":
            self._emit(result, node, None, node.scope, decoded, topic, received_at, position, payload)
            return result
        device_id = parsed.device_id or ""
        if kind == "DBIRTH":
            scope = node.devices[device_id] = _Scope(online=True)
            # Device aliases are unique within the edge node; NDATA/DDATA may use either.
            self._learn(scope, decoded.metrics)
            self._emit(result, node, device_id, scope, decoded, topic, received_at, position, payload)
            return result
        scope = node.devices.get(device_id)
        if kind == "DDEATH":
            if scope is not None and scope.online:
                self._stale(result, node, device_id, scope, topic, received_at)
                scope.online = False
            return result
        if scope is None or not scope.online:  # DDATA
            result.rebirth = f"DDATA from device {device_id} before its DBIRTH"
            letter(f"DDATA from {parsed.group_id}/{parsed.edge_node_id}/{device_id} before its DBIRTH")
            return result
        self._emit(result, node, device_id, scope, decoded, topic, received_at, position, payload)
        return result

    @staticmethod
    def _learn(scope: _Scope, metrics: list[spb.Metric]) -> None:
        for metric in metrics:
            if not metric.name:
                continue
            if metric.alias is not None:
                scope.names_by_alias[metric.alias] = metric.name
            scope.datatypes[metric.name] = int(metric.datatype)
            unit = metric.properties.get("engUnit") or metric.properties.get("EngUnit")
            if isinstance(unit, str) and unit:
                scope.units[metric.name] = unit[:32]

    def _emit(self, result: HostResult, node: _Node, device_id: str | None, scope: _Scope,
              decoded: spb.DecodedPayload, topic: str, received_at: int, position: str | None,
              payload: bytes) -> None:
        device = device_id or node.edge_node_id
        path = f"{node.group_id}/{node.edge_node_id}" + (f"/{device_id}" if device_id else "")
        src = source("sparkplug", path, topic, position, self.received_by)
        unknown_aliases: list[int] = []
        invalid: list[str] = []
        for metric in decoded.metrics:
            name = metric.name
            if name is None and metric.alias is not None:
                name = scope.names_by_alias.get(metric.alias) or node.scope.names_by_alias.get(metric.alias)
                if name is None:
                    unknown_aliases.append(metric.alias)
                    continue
            if name is None or name == spb.BDSEQ_METRIC or name.startswith(("Node Control/", "Device Control/")):
                continue
            if metric.datatype == spb.DataType.Unknown:
                # Data messages SHOULD leave the datatype out: the birth certificate's applies.
                born = scope.datatypes.get(name, node.scope.datatypes.get(name))
                if born:
                    metric.with_datatype(spb.datatype_of(born))
            if metric.error is not None:
                invalid.append(f"metric {name}: {metric.error}")
                continue
            observed_at = metric.timestamp_ms or decoded.timestamp_ms or received_at
            try:
                values = reading_values(name, metric)
            except InputError as exc:
                invalid.append(str(exc))
                continue
            if name.startswith(ALARM_PREFIX) and len(values) == 1 and isinstance(values[0][1], bool):
                value = values[0][1]
                alarm_type = name[len(ALARM_PREFIX):]
                previous = scope.alarm_states.get(name)
                scope.alarm_states[name] = value
                if previous == value or (previous is None and not value):
                    continue  # only changes (and alarms already active at birth)
                action = "raise" if value else "clear"
                result.records.append(alarm(
                    id=f"sparkplug:{path}:alarm:{alarm_type}:{action}:{observed_at}", device=device,
                    alarm_type=alarm_type, action=action, severity=None, message=None, observed_at=observed_at,
                    received_at=received_at, src=src))
                continue
            unit = scope.units.get(name) or node.scope.units.get(name)
            if metric.datatype in spb.ARRAY_TYPES:
                scope.array_sizes[name] = len(values)
            for metric_name, value, attributes in values:
                result.records.append(reading(
                    id=f"sparkplug:{path}:{metric_name}:{observed_at}", device=device, metric=metric_name,
                    value=value, unit=unit, observed_at=observed_at, received_at=received_at, src=src,
                    attributes=attributes))
        if unknown_aliases:
            result.rebirth = f"unknown alias {unknown_aliases[0]}"
            result.dead_letters.append(DeadLetter(
                payload, f"{topic}: metric alias(es) {', '.join(map(str, unknown_aliases[:20]))} not in any birth "
                f"certificate", "SparkplugStateError", "sparkplug", topic, position))
        if invalid:
            result.dead_letters.append(DeadLetter(payload, f"{topic}: {'; '.join(invalid[:10])}"[:1000],
                                                  "InputError", "sparkplug", topic, position))

    def _stale(self, result: HostResult, node: _Node, device_id: str | None, scope: _Scope, topic: str,
               received_at: int) -> None:
        """One null reading with quality=stale per metric, stamped with the host's receive time (the NDEATH
        timestamp is the will's, set at CONNECT: the spec says hosts must not rely on it)."""
        device = device_id or node.edge_node_id
        path = f"{node.group_id}/{node.edge_node_id}" + (f"/{device_id}" if device_id else "")
        src = source("sparkplug", path, topic, None, self.received_by)
        for name, datatype in scope.datatypes.items():
            if name == spb.BDSEQ_METRIC or name.startswith(("Node Control/", "Device Control/", ALARM_PREFIX)):
                continue
            names = [f"{name}[{i}]" for i in range(scope.array_sizes.get(name, 0))] \
                if datatype in spb.ARRAY_TYPES else [name]
            for metric_name in names:
                result.records.append(reading(
                    id=f"sparkplug:{path}:{metric_name}:stale:{received_at}", device=device, metric=metric_name,
                    value=None, unit=scope.units.get(name), observed_at=received_at, received_at=received_at,
                    src=src, attributes={"quality": "stale"}))

    def connection_lost(self, received_at: int, why: str) -> HostResult:
        """The host itself lost the broker: it can no longer see deaths, so every edge node's (and device's)
        metrics become stale now; each node must be born again (data before a new birth asks for Rebirth)."""
        result = HostResult()
        topic = f"{spb.NAMESPACE}/STATE/{why}"
        for node in self.nodes.values():
            if node.scope.online:
                self._stale(result, node, None, node.scope, topic, received_at)
            for device_id, scope in node.devices.items():
                if scope.online:
                    self._stale(result, node, device_id, scope, topic, received_at)
                scope.online = False
            node.scope.online = False
            node.last_seq = None
        return result


MAX_ARRAY_ELEMENTS = 1024
_EXACT_LIMIT = 2 ** 53  # integers beyond this lose precision as doubles: they travel as decimal strings


def _scalar(value: Any, field_name: str) -> float | str | bool | None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _EXACT_LIMIT:
        return str(value)
    if isinstance(value, bytes):
        value = value.hex()
    return check_value(value, field_name)


def reading_values(name: str, metric: spb.Metric) -> list[tuple[str, Any, dict[str, str]]]:
    """(metric name, value, attributes) of the readings one Sparkplug metric becomes: one for a scalar, one per
    element (`name[i]`, attribute `index`) for an array. Raises InputError for a value the schema cannot carry."""
    datatype = metric.datatype
    type_name = datatype.name if datatype != spb.DataType.Unknown else "Unknown"
    if datatype in spb.ARRAY_TYPES and isinstance(metric.value, list):
        if len(metric.value) > MAX_ARRAY_ELEMENTS:
            raise InputError(name, f"{type_name} of {len(metric.value)} elements (at most {MAX_ARRAY_ELEMENTS})")
        return [(f"{name}[{index}]", _scalar(element, f"{name}[{index}]"),
                 {"datatype": type_name, "index": str(index)}) for index, element in enumerate(metric.value)]
    attributes = {"datatype": type_name}
    if metric.is_null:
        attributes["quality"] = "null"
    return [(name, _scalar(metric.value, name), attributes)]


class SparkplugHost:
    """The MQTT side: connection, STATE, subscriptions, Rebirth commands, delivery with retries."""

    name = "sparkplug"

    def __init__(self, pipeline: IngestPipeline, url: str, host_id: str, groups: list[str],
                 keepalive: int = 30) -> None:
        self.pipeline = pipeline
        self.address = BrokerAddress.parse(url)
        self.host_id = host_id
        self.groups = groups
        self.state = SparkplugState(pipeline.instance)
        self.state_topic = f"{spb.NAMESPACE}/STATE/{host_id}"
        self.client = make_client(self.address, f"{host_id}-sparkplug-host", clean_session=True, manual_ack=False,
                                  keepalive=keepalive)
        self.keepalive = keepalive
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self._state_timestamp = now_ms()
        self.client.will_set(self.state_topic, self._state_payload(False), qos=1, retain=True)
        self._stopping = False
        self.granted_qos: list[int] = []
        self.ever_subscribed = False
        self.subscribed = threading.Event()
        self.stats: dict[str, int] = {"messages": 0, "records": 0, "dead_letters": 0, "rebirths_requested": 0,
                                      "delivery_failures": 0, "dropped": 0, "state_republished": 0,
                                      "connections_lost": 0}
        self._retrying = 0
        self._lock = threading.Lock()
        self._m_received = pipeline.metrics.received.labels(self.name)

    def _state_payload(self, online: bool) -> bytes:
        return json.dumps({"online": online, "timestamp": self._state_timestamp}).encode()

    def start(self) -> None:
        self.client.connect_async(self.address.host, self.address.port, keepalive=self.keepalive)
        self.client.loop_start()

    def subscriptions(self) -> list[tuple[str, int]]:
        """QoS 1, so QoS 1 deaths (and births a node sends at QoS 1) stay QoS 1; the host's own STATE topic even
        when only some groups are named, to answer a retained offline STATE on its own id."""
        topics = [(f"{spb.NAMESPACE}/{group}/#", 1) for group in self.groups]
        if not any(group in ("+", "STATE") for group in self.groups):
            topics.append((self.state_topic, 1))
        return topics

    def stop(self) -> None:
        self._stopping = True  # our own offline STATE below must not be answered with an online one
        if self.client.is_connected():
            info = self.client.publish(self.state_topic, self._state_payload(False), qos=1, retain=True)
            info.wait_for_publish(3)
        self.client.disconnect()
        self.client.loop_stop()
        event(log, "sparkplug_host_stopped", **self.stats)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        # Sparkplug 3.0: the STATE timestamp is the time of this CONNECT, in the will and in the online STATE
        # that follows it; paho sends the will set here with this (re)connect.
        self._state_timestamp = now_ms()
        client.will_set(self.state_topic, self._state_payload(False), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            event(log, "sparkplug_connect_refused", level=30, reason=str(reason))
            return
        client.subscribe(self.subscriptions())

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._stopping:
            return
        # The host cannot see deaths while away: every node's metrics are stale until it is born again.
        self.stats["connections_lost"] += 1
        result = self.state.connection_lost(now_ms(), self.host_id)
        event(log, "sparkplug_host_connection_lost", level=30, reason=str(reason), stale=len(result.records))
        if result.records:
            self.stats["records"] += len(result.records)
            self._submit(result.records, [])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.granted_qos = [getattr(reason, "value", reason) for reason in reasons]
        # Sparkplug 3.0: STATE online (with the will's timestamp) once subscribed and ready for births.
        client.publish(self.state_topic, self._state_payload(True), qos=1, retain=True)
        self.subscribed.set()
        self.ever_subscribed = True
        event(log, "sparkplug_host_online", host_id=self.host_id, groups=self.groups)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._handle(message)
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill paho's network thread
            event(log, "sparkplug_message_failed", level=40, topic=message.topic, error=repr(exc)[:300])

    def _handle(self, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if topic.startswith(f"{spb.NAMESPACE}/STATE/"):
            if topic == self.state_topic:
                self._own_state(message.payload)
            return
        self.stats["messages"] += 1
        self._m_received.inc()
        result = self.state.handle(topic, message.payload, now_ms())
        if result.rebirth:
            self._request_rebirth(topic, result.rebirth)
        if result.records or result.dead_letters:
            self.stats["records"] += len(result.records)
            self.stats["dead_letters"] += len(result.dead_letters)
            self._submit(result.records, result.dead_letters)

    def _own_state(self, payload: bytes) -> None:
        """A STATE on our own host id saying offline (a retained will of an earlier session, or another client):
        the spec says to publish online again at once."""
        try:
            online = json.loads(payload).get("online")
        except (ValueError, AttributeError):
            online = payload.strip().upper() == b"ONLINE"  # Sparkplug 2.2 plain text
        if online is True or self._stopping:
            return
        self.stats["state_republished"] += 1
        self.client.publish(self.state_topic, self._state_payload(True), qos=1, retain=True)
        event(log, "sparkplug_state_republished", host_id=self.host_id)

    def _submit(self, records: list[Emit], dead_letters: list[DeadLetter]) -> None:
        def done(errors: list[str]) -> None:
            if not errors:
                return
            self.stats["delivery_failures"] += 1
            with self._lock:
                if self._retrying + len(records) > MAX_RETRY_RECORDS:
                    self.stats["dropped"] += len(records)
                    event(log, "sparkplug_records_dropped", level=40, records=len(records), error=errors[0][:200])
                    return
                self._retrying += len(records)

            def again() -> None:
                with self._lock:
                    self._retrying -= len(records)
                self._submit(records, dead_letters)

            timer = threading.Timer(RETRY_S, again)
            timer.daemon = True
            timer.start()

        self.pipeline.submit(self.name, records, done, dead_letters)

    def _request_rebirth(self, topic: str, why: str) -> None:
        try:
            parsed = spb.parse_topic(topic)
        except spb.SparkplugError:
            return
        node = self.state.node(parsed.group_id, parsed.edge_node_id)
        now = time.monotonic()
        if now - node.last_rebirth_request < REBIRTH_MIN_INTERVAL_S:
            return
        node.last_rebirth_request = now
        node.rebirths_requested += 1
        self.stats["rebirths_requested"] += 1
        command = spb.topic(parsed.group_id, "NCMD", parsed.edge_node_id)
        self.client.publish(command, spb.rebirth_command(now_ms()), qos=0)
        event(log, "sparkplug_rebirth_requested", group=parsed.group_id, edge_node=parsed.edge_node_id, why=why)
