"""Sparkplug B (v3.0) payloads and topics, without protoc.

The message classes are built at import time from descriptors that follow `sparkplug_b.proto` of the Eclipse
Sparkplug specification (package org.eclipse.tahu.protobuf, proto2): Payload{timestamp=1, metrics=2, seq=3,
uuid=4, body=5} and Payload.Metric{name=1, alias=2, timestamp=3, datatype=4, is_historical=5, is_transient=6,
is_null=7, metadata=8, properties=9, oneof value {int_value=10, long_value=11, float_value=12, double_value=13,
boolean_value=14, string_value=15, bytes_value=16, dataset_value=17, template_value=18, extension_value=19}}, with
MetaData, PropertyValue, PropertySet and PropertySetList. DataSet and Template values are not modelled; a
parser keeps them as unknown fields and `decode_payload` reports such a metric's value as None.

Values: signed integers travel in two's complement (Int8-Int32 in int_value, Int64 in long_value); UInt64 is
kept as an exact Python int; arrays (datatypes 22-34, Sparkplug 3.0) are packed little-endian into bytes_value,
BooleanArray as a 4-byte count then bits most significant first, StringArray as NUL-terminated UTF-8. A metric
decoded without a datatype (NDATA/DDATA SHOULD leave it out) keeps its wire value, so `Metric.with_datatype`
can decode it again with the datatype of its birth.

Topic namespace: spBv1.0/{group_id}/{NBIRTH|NDEATH|NDATA|NCMD|DBIRTH|DDEATH|DDATA|DCMD}/{edge_node_id}[/{device_id}]
and spBv1.0/STATE/{host_id}.

Rules an edge node follows (and `EdgeNodeSession` checks on the receiving side):
- NBIRTH has seq 0, every metric (name, alias, datatype, value), a `bdSeq` (Int64) that equals the bdSeq in
  the MQTT will (NDEATH), and `Node Control/Rebirth` (Boolean);
- NDATA carries only the metrics that changed (report by exception), seq = previous + 1, wrapping 255 -> 0;
  metrics born with an alias may be sent by alias only;
- NDEATH carries only bdSeq; a host receiving it marks the node's metrics stale;
- a host seeing a seq gap asks for a rebirth with NCMD `Node Control/Rebirth` = true.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

NAMESPACE = "spBv1.0"
NODE_MESSAGE_TYPES = ("NBIRTH", "NDEATH", "NDATA", "NCMD")
DEVICE_MESSAGE_TYPES = ("DBIRTH", "DDEATH", "DDATA", "DCMD")
REBIRTH_METRIC = "Node Control/Rebirth"
BDSEQ_METRIC = "bdSeq"


class DataType(IntEnum):
    """Sparkplug B metric datatypes (spec table 'Data Types')."""

    Unknown = 0
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15
    DataSet = 16
    Bytes = 17
    File = 18
    Template = 19
    PropertySet = 20
    PropertySetList = 21
    # Sparkplug 3.0 arrays: packed little-endian into bytes_value (see `_ARRAY_FORMATS`).
    Int8Array = 22
    Int16Array = 23
    Int32Array = 24
    Int64Array = 25
    UInt8Array = 26
    UInt16Array = 27
    UInt32Array = 28
    UInt64Array = 29
    FloatArray = 30
    DoubleArray = 31
    BooleanArray = 32
    StringArray = 33
    DateTimeArray = 34


class SparkplugError(ValueError):
    """A payload or topic that is not valid Sparkplug B."""


# --- descriptors ------------------------------------------------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, ftype: int, label: int = _F.LABEL_OPTIONAL, type_name: str | None = None,
           oneof: int | None = None) -> _F:
    out = _F(name=name, number=number, type=ftype, label=label)
    if type_name:
        out.type_name = type_name
    if oneof is not None:
        out.oneof_index = oneof
    return out


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    pkg = ".org.eclipse.tahu.protobuf.Payload"
    u32, u64, f32, f64, boolean, string, raw, msg = (_F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_FLOAT, _F.TYPE_DOUBLE,
                                                     _F.TYPE_BOOL, _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_MESSAGE)
    rep = _F.LABEL_REPEATED

    property_value = descriptor_pb2.DescriptorProto(name="PropertyValue")
    property_value.oneof_decl.add(name="value")
    property_value.field.extend([
        _field("type", 1, u32), _field("is_null", 2, boolean),
        _field("int_value", 3, u32, oneof=0), _field("long_value", 4, u64, oneof=0),
        _field("float_value", 5, f32, oneof=0), _field("double_value", 6, f64, oneof=0),
        _field("boolean_value", 7, boolean, oneof=0), _field("string_value", 8, string, oneof=0),
        _field("propertyset_value", 9, msg, type_name=f"{pkg}.PropertySet", oneof=0),
        _field("propertysets_value", 10, msg, type_name=f"{pkg}.PropertySetList", oneof=0),
    ])
    property_set = descriptor_pb2.DescriptorProto(name="PropertySet")
    property_set.field.extend([
        _field("keys", 1, string, rep), _field("values", 2, msg, rep, f"{pkg}.PropertyValue"),
    ])
    property_set_list = descriptor_pb2.DescriptorProto(name="PropertySetList")
    property_set_list.field.extend([_field("propertyset", 1, msg, rep, f"{pkg}.PropertySet")])
    metadata = descriptor_pb2.DescriptorProto(name="MetaData")
    metadata.field.extend([
        _field("is_multi_part", 1, boolean), _field("content_type", 2, string), _field("size", 3, u64),
        _field("seq", 4, u64), _field("file_name", 5, string), _field("file_type", 6, string),
        _field("md5", 7, string), _field("description", 8, string),
    ])
    metric = descriptor_pb2.DescriptorProto(name="Metric")
    metric.oneof_decl.add(name="value")
    metric.field.extend([
        _field("name", 1, string), _field("alias", 2, u64), _field("timestamp", 3, u64),
        _field("datatype", 4, u32), _field("is_historical", 5, boolean), _field("is_transient", 6, boolean),
        _field("is_null", 7, boolean), _field("metadata", 8, msg, type_name=f"{pkg}.MetaData"),
        _field("properties", 9, msg, type_name=f"{pkg}.PropertySet"),
        _field("int_value", 10, u32, oneof=0), _field("long_value", 11, u64, oneof=0),
        _field("float_value", 12, f32, oneof=0), _field("double_value", 13, f64, oneof=0),
        _field("boolean_value", 14, boolean, oneof=0), _field("string_value", 15, string, oneof=0),
        _field("bytes_value", 16, raw, oneof=0),
    ])
    payload = descriptor_pb2.DescriptorProto(name="Payload")
    payload.nested_type.extend([property_value, property_set, property_set_list, metadata, metric])
    payload.field.extend([
        _field("timestamp", 1, u64), _field("metrics", 2, msg, rep, f"{pkg}.Metric"), _field("seq", 3, u64),
        _field("uuid", 4, string), _field("body", 5, raw),
    ])
    return descriptor_pb2.FileDescriptorProto(
        name="lineguard/sparkplug_b.proto", package="org.eclipse.tahu.protobuf", syntax="proto2",
        message_type=[payload],
    )


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())
Payload = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload"))

_INT32_TYPES = {DataType.Int8: 8, DataType.Int16: 16, DataType.Int32: 32}
_UINT32_TYPES = {DataType.UInt8, DataType.UInt16, DataType.UInt32}
# Array datatypes: little-endian struct codes of one element (Boolean and String arrays are packed apart).
_ARRAY_FORMATS = {
    DataType.Int8Array: "b", DataType.Int16Array: "h", DataType.Int32Array: "i", DataType.Int64Array: "q",
    DataType.UInt8Array: "B", DataType.UInt16Array: "H", DataType.UInt32Array: "I", DataType.UInt64Array: "Q",
    DataType.FloatArray: "f", DataType.DoubleArray: "d", DataType.DateTimeArray: "q",
}
ARRAY_TYPES = frozenset({*_ARRAY_FORMATS, DataType.BooleanArray, DataType.StringArray})
# The scalar type of one element of each array type (a reading per element is typed by it).
ARRAY_ELEMENT_TYPES = {
    DataType.Int8Array: DataType.Int8, DataType.Int16Array: DataType.Int16, DataType.Int32Array: DataType.Int32,
    DataType.Int64Array: DataType.Int64, DataType.UInt8Array: DataType.UInt8, DataType.UInt16Array: DataType.UInt16,
    DataType.UInt32Array: DataType.UInt32, DataType.UInt64Array: DataType.UInt64,
    DataType.FloatArray: DataType.Float, DataType.DoubleArray: DataType.Double,
    DataType.BooleanArray: DataType.Boolean, DataType.StringArray: DataType.String,
    DataType.DateTimeArray: DataType.DateTime,
}


def datatype_of(number: int) -> DataType:
    """The DataType of a wire number; numbers this module does not know are Unknown."""
    return DataType(number) if number in DataType._value2member_map_ else DataType.Unknown


# --- metrics and payloads ---------------------------------------------------------------------------------


@dataclass
class Metric:
    name: str | None
    value: Any
    datatype: DataType
    alias: int | None = None
    timestamp_ms: int | None = None
    is_null: bool = False
    properties: dict[str, Any] = field(default_factory=dict)
    # Set by decode_payload: the oneof member and raw value as on the wire, so a metric sent without a datatype
    # (NDATA/DDATA SHOULD leave it out) can be decoded again with the datatype of its birth.
    wire: tuple[str, Any] | None = field(default=None, repr=False, compare=False)
    error: str | None = None  # why the value could not be decoded (it is then None)

    def with_datatype(self, datatype: DataType) -> Metric:
        """This metric decoded as `datatype` (the birth certificate's), when it came without one."""
        if self.wire is None or self.is_null:
            self.datatype = datatype
            return self
        value, error = _decode_wire(self.wire[0], self.wire[1], datatype)
        self.datatype, self.value, self.error = datatype, value, error
        return self


def _pack_array(datatype: DataType, values: Any) -> bytes:
    if datatype == DataType.BooleanArray:
        items = [bool(v) for v in values]
        packed = bytearray(len(items).to_bytes(4, "little"))
        packed.extend(bytes((len(items) + 7) // 8))
        for index, item in enumerate(items):
            if item:
                packed[4 + index // 8] |= 0x80 >> (index % 8)  # most significant bit first
        return bytes(packed)
    if datatype == DataType.StringArray:
        return b"".join(str(v).encode() + b"\x00" for v in values)
    code = _ARRAY_FORMATS[datatype]
    items = [float(v) if code in "fd" else int(v) for v in values]
    return struct.pack(f"<{len(items)}{code}", *items)


def _unpack_array(datatype: DataType, raw: bytes) -> list:
    if datatype == DataType.BooleanArray:
        if len(raw) < 4:
            raise SparkplugError(f"BooleanArray of {len(raw)} bytes lacks its 4-byte count")
        count = int.from_bytes(raw[:4], "little")
        if len(raw) - 4 < (count + 7) // 8:
            raise SparkplugError(f"BooleanArray of {count} values needs {(count + 7) // 8} bytes after the count, "
                                 f"got {len(raw) - 4}")
        return [bool(raw[4 + i // 8] & (0x80 >> (i % 8))) for i in range(count)]
    if datatype == DataType.StringArray:
        if not raw:
            return []
        if not raw.endswith(b"\x00"):
            raise SparkplugError("StringArray does not end with a NUL terminator")
        try:
            return [part.decode() for part in raw[:-1].split(b"\x00")]
        except UnicodeDecodeError as exc:
            raise SparkplugError(f"StringArray element is not UTF-8: {exc}") from None
    code = _ARRAY_FORMATS[datatype]
    size = struct.calcsize(code)
    if len(raw) % size:
        raise SparkplugError(f"{datatype.name} of {len(raw)} bytes is not a whole number of {size}-byte elements")
    return list(struct.unpack(f"<{len(raw) // size}{code}", raw))


def _set_value(target: Any, datatype: DataType, value: Any) -> None:
    """Put `value` into the oneof member the spec assigns to `datatype` (signed ints in two's complement)."""
    if datatype in _INT32_TYPES:
        target.int_value = int(value) & 0xFFFFFFFF
    elif datatype in _UINT32_TYPES:
        target.int_value = int(value)
    elif datatype in (DataType.Int64, DataType.UInt64, DataType.DateTime):
        target.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype == DataType.Float:
        target.float_value = float(value)
    elif datatype == DataType.Double:
        target.double_value = float(value)
    elif datatype == DataType.Boolean:
        target.boolean_value = bool(value)
    elif datatype in (DataType.String, DataType.Text, DataType.UUID):
        target.string_value = str(value)
    elif datatype in (DataType.Bytes, DataType.File):
        target.bytes_value = bytes(value)
    elif datatype in ARRAY_TYPES:
        target.bytes_value = _pack_array(datatype, value)
    else:
        raise SparkplugError(f"datatype {datatype.name} is not supported by this encoder")


def _decode_wire(which: str, raw: Any, datatype: int) -> tuple[Any, str | None]:
    """(value, error) of a oneof member read as `datatype`. Unknown datatypes keep the raw value."""
    if datatype in _INT32_TYPES and which in ("int_value", "long_value"):
        bits = _INT32_TYPES[DataType(datatype)]
        raw &= (1 << bits) - 1
        return (raw - (1 << bits) if raw >= 1 << (bits - 1) else raw), None
    if datatype == DataType.Int64 and which == "long_value":
        return (raw - (1 << 64) if raw >= 1 << 63 else raw), None
    if datatype in ARRAY_TYPES:
        if which != "bytes_value":
            return None, f"{DataType(datatype).name} must be sent as bytes_value, got {which}"
        try:
            return _unpack_array(DataType(datatype), raw), None
        except SparkplugError as exc:
            return None, str(exc)
    return raw, None


def _get_value(source: Any, datatype: int) -> Any:
    which = source.WhichOneof("value")
    if which is None:
        return None
    return _decode_wire(which, getattr(source, which), datatype)[0]


def _property_datatype(value: Any) -> DataType:
    if isinstance(value, bool):
        return DataType.Boolean
    if isinstance(value, int):
        return DataType.Int64
    if isinstance(value, float):
        return DataType.Double
    return DataType.String


def encode_payload(metrics: list[Metric], timestamp_ms: int, seq: int | None) -> bytes:
    """Serialize a Sparkplug B payload. `seq` is None only for NDEATH."""
    payload = Payload()
    payload.timestamp = timestamp_ms
    if seq is not None:
        if not 0 <= seq <= 255:
            raise SparkplugError(f"seq must be 0..255, got {seq}")
        payload.seq = seq
    for metric in metrics:
        out = payload.metrics.add()
        if metric.name is not None:
            out.name = metric.name
        if metric.alias is not None:
            out.alias = metric.alias
        out.timestamp = metric.timestamp_ms if metric.timestamp_ms is not None else timestamp_ms
        out.datatype = int(metric.datatype)
        if metric.is_null or metric.value is None:
            out.is_null = True
        else:
            if metric.datatype in (DataType.Float, DataType.Double) and not math.isfinite(float(metric.value)):
                raise SparkplugError(f"metric {metric.name or metric.alias}: value {metric.value} is not finite")
            _set_value(out, metric.datatype, metric.value)
        for key, value in metric.properties.items():
            out.properties.keys.append(key)
            prop = out.properties.values.add()
            ptype = _property_datatype(value)
            prop.type = int(ptype)
            _set_value(prop, ptype, value)
    return payload.SerializeToString()


@dataclass
class DecodedPayload:
    timestamp_ms: int | None
    seq: int | None
    metrics: list[Metric]
    uuid: str | None = None
    body: bytes | None = None

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


def decode_payload(data: bytes) -> DecodedPayload:
    """Parse a Sparkplug B payload; raises SparkplugError on bytes that are not one."""
    payload = Payload()
    try:
        payload.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError (a subclass of Exception) on bad bytes
        raise SparkplugError(f"not a Sparkplug B payload: {exc}") from None
    metrics = []
    for raw in payload.metrics:
        properties = {}
        if raw.HasField("properties"):
            for key, prop in zip(raw.properties.keys, raw.properties.values, strict=False):
                properties[key] = None if prop.is_null else _get_value(prop, prop.type)
        which = raw.WhichOneof("value")
        wire = None if which is None else (which, getattr(raw, which))
        value, error = (None, None) if raw.is_null or wire is None else _decode_wire(which, wire[1], raw.datatype)
        metrics.append(Metric(
            name=raw.name if raw.HasField("name") else None,
            value=value,
            datatype=datatype_of(raw.datatype),
            alias=raw.alias if raw.HasField("alias") else None,
            timestamp_ms=raw.timestamp if raw.HasField("timestamp") else None,
            is_null=raw.is_null,
            properties=properties,
            wire=wire,
            error=error,
        ))
    return DecodedPayload(
        timestamp_ms=payload.timestamp if payload.HasField("timestamp") else None,
        seq=payload.seq if payload.HasField("seq") else None,
        metrics=metrics,
        uuid=payload.uuid if payload.HasField("uuid") else None,
        body=payload.body if payload.HasField("body") else None,
    )


# --- topics -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    group_id: str
    message_type: str
    edge_node_id: str
    device_id: str | None = None

    def __str__(self) -> str:
        parts = [NAMESPACE, self.group_id, self.message_type, self.edge_node_id]
        if self.device_id:
            parts.append(self.device_id)
        return "/".join(parts)


def _check_id(kind: str, value: str) -> None:
    if not value or any(c in value for c in "+/#"):
        raise SparkplugError(f"{kind} {value!r} must be a non-empty string without '+', '/' or '#'")


def topic(group_id: str, message_type: str, edge_node_id: str, device_id: str | None = None) -> str:
    _check_id("group_id", group_id)
    _check_id("edge_node_id", edge_node_id)
    if device_id is not None:
        _check_id("device_id", device_id)
    allowed = DEVICE_MESSAGE_TYPES if device_id else NODE_MESSAGE_TYPES
    if message_type not in allowed:
        raise SparkplugError(f"message type {message_type!r} is not one of {allowed}")
    return str(Topic(group_id, message_type, edge_node_id, device_id))


def parse_topic(name: str) -> Topic:
    """Split a Sparkplug B topic; STATE topics and anything else raise SparkplugError."""
    parts = name.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        raise SparkplugError(f"{name!r} is not a Sparkplug B node or device topic (spBv1.0/group/TYPE/node[/device])")
    message_type = parts[2]
    expected = DEVICE_MESSAGE_TYPES if len(parts) == 5 else NODE_MESSAGE_TYPES
    if message_type not in expected:
        raise SparkplugError(f"{name!r}: message type {message_type!r} is not one of {expected}")
    return Topic(parts[1], message_type, parts[3], parts[4] if len(parts) == 5 else None)


# --- sequence numbers and host-side session tracking ------------------------------------------------------


class Sequence:
    """The payload seq counter: 0 at birth, +1 per message, 255 wraps to 0."""

    def __init__(self) -> None:
        self.value = 0

    def reset(self) -> int:
        self.value = 0
        return 0

    def next(self) -> int:
        self.value = (self.value + 1) % 256
        return self.value


@dataclass
class EdgeNodeSession:
    """What a host application knows about one edge node: its birth metrics by alias, the last seq and bdSeq.

    `apply(topic, payload)` returns the metrics of an NBIRTH or NDATA with names resolved from aliases, and sets
    `needs_rebirth` when it sees a seq gap, data before a birth, or an unknown alias.
    """

    group_id: str
    edge_node_id: str
    online: bool = False
    bd_seq: int | None = None
    last_seq: int | None = None
    names_by_alias: dict[int, str] = field(default_factory=dict)
    datatypes: dict[str, DataType] = field(default_factory=dict)
    needs_rebirth: bool = False

    def apply(self, parsed_topic: Topic, payload: DecodedPayload) -> list[Metric]:
        kind = parsed_topic.message_type
        if kind == "NBIRTH":
            self.names_by_alias = {m.alias: m.name for m in payload.metrics if m.alias is not None and m.name}
            self.datatypes = {m.name: m.datatype for m in payload.metrics if m.name}
            bd = payload.metric(BDSEQ_METRIC)
            self.bd_seq = int(bd.value) if bd and bd.value is not None else None
            self.online, self.last_seq, self.needs_rebirth = True, payload.seq, payload.seq != 0
            return payload.metrics
        if kind == "NDEATH":
            bd = payload.metric(BDSEQ_METRIC)
            if bd is None or self.bd_seq is None or bd.value == self.bd_seq:
                self.online = False  # a stale will from an older session does not kill the current one
            return []
        if kind == "NDATA":
            if not self.online or self.last_seq is None:
                self.needs_rebirth = True
                return []
            if payload.seq != (self.last_seq + 1) % 256:
                self.needs_rebirth = True
            self.last_seq = payload.seq
            resolved = []
            for metric in payload.metrics:
                if metric.name is None and metric.alias is not None:
                    metric.name = self.names_by_alias.get(metric.alias)
                    if metric.name is None:
                        self.needs_rebirth = True
                        continue
                resolved.append(metric)
            return resolved
        return []


def rebirth_command(timestamp_ms: int) -> bytes:
    """The NCMD payload a host sends to ask an edge node to publish a new NBIRTH."""
    return encode_payload([Metric(REBIRTH_METRIC, True, DataType.Boolean)], timestamp_ms, seq=None)
