"""The generated Avro codec writes fastavro's bytes and reads fastavro's records, on every topic's schema and on a
schema with every type; it refuses corrupt bodies and leaves the schemas it does not cover to fastavro."""

from __future__ import annotations

import io
import json
import math
import struct

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineguard.avro import AvroSerde, CorruptPayloadError, default_schemas_dir
from lineguard.avro_codec import LONG_MAX, LONG_MIN, compile_codec

SCHEMA_FILES = sorted(default_schemas_dir().glob("*.avsc")) + sorted(default_schemas_dir().glob("history/*/*.avsc"))

EVERY_TYPE = {
    "type": "record", "name": "Everything", "namespace": "test.codec", "fields": [
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "s", "type": "string"},
        {"name": "raw", "type": "bytes"},
        {"name": "n", "type": "null"},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "point", "type": {"type": "record", "name": "Point", "namespace": "other.ns", "fields": [
            {"name": "x", "type": "double"}, {"name": "label", "type": ["null", "string"], "default": None}]}},
        {"name": "points", "type": {"type": "array", "items": "other.ns.Point"}},
        {"name": "by_name", "type": {"type": "map", "values": {"type": "array", "items": "long"}}},
        {"name": "maybe_colour", "type": ["null", "Colour"], "default": None},
        {"name": "anything", "type": ["null", "boolean", "int", "long", "double", "string", "bytes",
                                     {"type": "array", "items": "string"}, {"type": "map", "values": "int"}]},
        {"name": "with_default", "type": "string", "default": "fallback"},
    ],
}


def _strategy(schema, named: dict, namespace: str = ""):
    """Records that fit `schema` (JSON form), for comparing the codec with fastavro."""
    if isinstance(schema, str):
        if schema in named:
            return named[schema]
        if f"{namespace}.{schema}" in named:
            return named[f"{namespace}.{schema}"]
        return {
            "null": st.none(), "boolean": st.booleans(),
            "int": st.integers(-(1 << 31), (1 << 31) - 1), "long": st.integers(LONG_MIN, LONG_MAX),
            "float": st.floats(width=32, allow_nan=False), "double": st.floats(allow_nan=False),
            "string": st.text(max_size=80), "bytes": st.binary(max_size=80),
        }[schema]
    if isinstance(schema, list):
        return st.one_of([_strategy(b, named, namespace) for b in schema])
    kind = schema["type"]
    if kind in ("record", "enum", "fixed"):
        name = schema["name"]
        ns = schema.get("namespace", namespace) if "." not in name else name.rpartition(".")[0]
        full = name if "." in name else f"{ns}.{name}"
        if kind == "enum":
            strategy = st.sampled_from(schema["symbols"])
        elif kind == "fixed":
            strategy = st.binary(min_size=schema["size"], max_size=schema["size"])
        else:
            strategy = st.deferred(lambda: st.fixed_dictionaries(
                {f["name"]: _strategy(f["type"], named, ns) for f in schema["fields"]}))
        named[full] = named[name] = strategy
        return strategy
    if kind == "array":
        return st.lists(_strategy(schema["items"], named, namespace), max_size=70)
    if kind == "map":
        return st.dictionaries(st.text(max_size=10), _strategy(schema["values"], named, namespace), max_size=5)
    return _strategy(kind, named, namespace)


def _fastavro_bytes(parsed, record) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def _assert_same(schema: dict, record) -> None:
    parsed = fastavro.parse_schema(schema)
    codec = compile_codec(schema)
    expected = _fastavro_bytes(parsed, record)
    out = bytearray(b"HDR")
    codec.encode(out, record)
    assert bytes(out[3:]) == expected
    decoded, end = codec.decode(b"HDR" + expected, 3)
    assert end == len(expected) + 3
    assert decoded == fastavro.schemaless_reader(io.BytesIO(expected), parsed, None)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: str(p.relative_to(default_schemas_dir())))
def test_every_topic_schema_is_compiled_and_matches_fastavro(path):
    schema = json.loads(path.read_text())
    assert compile_codec(schema) is not None, "a topic's schema fell back to fastavro (the slow path)"

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_strategy(schema, {}))
    def check(record):
        _assert_same(schema, record)

    check()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(_strategy(EVERY_TYPE, {}))
def test_every_avro_type_matches_fastavro(record):
    _assert_same(EVERY_TYPE, record)


@pytest.mark.parametrize("value", [0, -1, 1, 63, 64, -64, -65, 1 << 40, LONG_MIN, LONG_MAX, 1_764_400_000_000])
def test_long_edges(value):
    schema = {"type": "record", "name": "L", "fields": [{"name": "v", "type": "long"},
                                                       {"name": "u", "type": ["null", "long", "string"]}]}
    _assert_same(schema, {"v": value, "u": value})


def test_union_branches_are_chosen_as_fastavro_chooses_them():
    schema = EVERY_TYPE["fields"][14]["type"]
    wrapped = {"type": "record", "name": "U", "fields": [{"name": "v", "type": schema}]}
    for value in [None, True, False, 0, 5, 1 << 40, 2.5, -0.0, math.inf, "x", b"x", [], ["a"], {}, {"k": 1}]:
        _assert_same(wrapped, {"v": value})


def test_missing_fields_take_defaults_or_null_as_fastavro_does():
    schema = {"type": "record", "name": "D", "fields": [
        {"name": "a", "type": "string", "default": "dflt"}, {"name": "b", "type": ["null", "string"]},
        {"name": "c", "type": {"type": "array", "items": "int"}, "default": [1, 2]},
        {"name": "d", "type": "double"}]}
    _assert_same(schema, {"d": 3})  # an int for a double field is converted, as fastavro does


def test_records_that_do_not_fit_raise():
    codec = compile_codec(EVERY_TYPE)
    for bad in [{}, {"b": True}, {"b": True, "i": "1"}]:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the serde turns any of them into its own error
            codec.encode(bytearray(), bad)
    observation = compile_codec(json.loads((default_schemas_dir() / "line.observations.v1.avsc").read_text()))
    with pytest.raises(ValueError, match="no branch"):
        observation.encode(bytearray(), {"id": "a", "line_id": "l", "entity_id": "e", "entity_type": "t",
                                         "sensor_id": "s", "attribute": "a", "value": object()})
    with pytest.raises(OverflowError):
        compile_codec({"type": "record", "name": "I", "fields": [{"name": "v", "type": "int"}]}).encode(
            bytearray(), {"v": 1 << 31})


@pytest.mark.parametrize("schema", [
    {"type": "record", "name": "T", "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}]},
    ["null", {"type": "record", "name": "A", "fields": []}, {"type": "record", "name": "B", "fields": []}],
    ["float", "double"],
    {"type": "array", "items": "null"},
])
def test_schemas_it_does_not_cover_are_left_to_fastavro(schema):
    assert compile_codec(schema) is None


def test_corrupt_bodies_raise_at_every_truncation_and_on_bad_indexes():
    schema = json.loads((default_schemas_dir() / "raw.telemetry.v1.avsc").read_text())
    codec = compile_codec(schema)
    record = {"id": "r" * 70, "device": "d", "metric": "m", "value": 1.5, "unit": "Nm",
              "observed_at": 1_764_400_000_000, "received_at": -5,
              "source": {"protocol": "mqtt", "device": "d", "address": "a/b", "position": None, "received_by": "x"},
              "attributes": {"k": "v", "q": "w"}}
    body = bytearray()
    codec.encode(body, record)
    body = bytes(body)
    assert codec.decode(body, 0) == (record, len(body))
    for cut in range(len(body)):
        try:
            codec.decode(body[:cut], 0)
        except (IndexError, ValueError, struct.error):  # (UnicodeDecodeError is a ValueError)
            continue
        pytest.fail(f"the body cut at byte {cut} of {len(body)} decoded")
    for garbage in [b"\xff" * 12, b"\x02" + b"\x80" * 12, b"\x7f", b"\x00\x00\x00\x09",
                    b"\x02a\x02b\x02c\x09"]:
        with pytest.raises((IndexError, ValueError, struct.error)):
            codec.decode(garbage, 0)


def test_the_serde_reports_corrupt_bodies_as_corrupt_payloads():
    serde = AvroSerde()
    payload = serde.encode("raw.telemetry.v1", {
        "id": "r1", "device": "d", "metric": "m", "value": None, "unit": None, "observed_at": 1, "received_at": 2,
        "source": {"protocol": "mqtt", "device": "d", "address": "a"}, "attributes": {}})
    for cut in range(10, len(payload)):
        with pytest.raises(CorruptPayloadError):
            serde.decode("raw.telemetry.v1", payload[:cut])
    with pytest.raises(CorruptPayloadError, match="trailing"):
        serde.decode("raw.telemetry.v1", payload + b"\x00")
    union_at = payload.index(b"m", 10) + 1  # the value's union index follows the metric "m"
    broken = payload[:union_at] + b"\x08" + payload[union_at + 1:]
    with pytest.raises(CorruptPayloadError, match="union"):
        serde.decode("raw.telemetry.v1", broken)


@pytest.mark.parametrize(("schema", "body"), [
    ("string", b"\x08ab"),  # a length past the end
    ("string", b"\x03ab"),  # a negative length
    ("long", b"\xff" * 9 + b"\x7f"),  # ten bytes holding more than 64 bits
    ("long", b"\x80" * 11 + b"\x01"),  # longer than ten bytes
    (["null", "string"], b"\x04"),  # a union index past its branches
])
def test_malformed_primitives_raise(schema, body):
    with pytest.raises(ValueError):
        compile_codec(schema).decode(body, 0)


def test_a_recursive_schema_round_trips():
    node = {"type": "record", "name": "Node", "fields": [
        {"name": "label", "type": "string"}, {"name": "children", "type": {"type": "array", "items": "Node"}},
        {"name": "next", "type": ["null", "Node"], "default": None}]}
    assert compile_codec(node) is not None
    _assert_same(node, {"label": "a", "children": [{"label": "b", "children": [], "next": None}],
                        "next": {"label": "c", "children": [], "next": None}})
