"""Sparkplug B payloads from Eclipse Tahu's Python library decoded by lineguard.sparkplug and the host state:
datatypes from the birth, arrays, UInt64 beyond 2^53, the spec's array examples, stale readings at receive time,
unknown aliases dead-lettered with the original bytes, and every node stale when the host loses the broker."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lineguard import sparkplug as spb
from lineguard.avro import AvroSerde
from services.ingest.sparkplug_host import SparkplugHost, SparkplugState

if importlib.util.find_spec("sparkplub_b_packets") is None:
    pytest.skip("sparkplug-b-packets (Eclipse Tahu's Python core, the dev extra) is not installed",
                allow_module_level=True)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "ingest"))
from tahu_edge import encode  # noqa: E402 - runs Tahu in its own process (see its docstring)

sys.path.pop(0)

SERDE = AvroSerde(None, None, None, "")
G, N = "bakery1", "line1-oven"
TS = 1_790_000_000_000


def topic(kind: str, device: str | None = None) -> str:
    return spb.topic(G, kind, N, device)


def birth(*metrics) -> dict:  # noqa: ANN002
    return {"kind": "nbirth", "metrics": [list(m) for m in metrics], "timestamp": TS}


def data(*metrics, at: int = TS + 1, with_datatype: bool = False) -> dict:  # noqa: ANN002
    return {"kind": "ndata", "metrics": [[None, *m] for m in metrics], "timestamp": at,
            "with_datatype": with_datatype}


def death(at: int) -> dict:
    return {"kind": "death", "timestamp": at}


def values(result) -> dict:  # noqa: ANN001
    for emit in result.records:
        SERDE.encode(emit.topic, emit.value)
    return {r.value["metric"]: r.value["value"] for r in result.records}


SCALARS = [("Int8", -6), ("Int16", -300), ("Int32", -6), ("Int64", -(2**40)), ("UInt32", 4_000_000_000),
           ("Float", 1.5), ("Boolean", True), ("String", "run")]


def test_data_without_a_datatype_is_decoded_with_the_births():
    messages = []
    for datatype, value in SCALARS:
        messages += [death(TS), birth(("m", 7, datatype, value)), data((7, datatype, value))]
    payloads = encode(messages)
    for index, (datatype, value) in enumerate(SCALARS):
        _, born, sent = payloads[3 * index:3 * index + 3]
        assert spb.decode_payload(sent).metrics[0].datatype == spb.DataType.Unknown  # left out on the wire
        state = SparkplugState()
        state.handle(topic("NBIRTH"), born, TS)
        (record,) = state.handle(topic("NDATA"), sent, TS).records
        assert (record.value["value"], record.value["attributes"]["datatype"]) == (value, datatype), datatype


def test_uint64_beyond_2_53_is_carried_exactly():
    _, born, full, small = encode([death(TS), birth(("count", 1, "UInt64", 2**53 + 1)),
                                   data((1, "UInt64", 2**64 - 1)), data((1, "UInt64", 42), at=TS + 2)])
    state = SparkplugState()
    assert values(state.handle(topic("NBIRTH"), born, TS))["count"] == "9007199254740993"
    assert values(state.handle(topic("NDATA"), full, TS))["count"] == "18446744073709551615"
    assert values(state.handle(topic("NDATA"), small, TS))["count"] == 42.0


ARRAYS = [("Int8Array", [-1, 2, -128]), ("Int16Array", [-300, 300]), ("Int32Array", [-6, 7]),
          ("Int64Array", [-(2**40), 5]), ("UInt8Array", [0, 255]), ("UInt16Array", [65535]),
          ("UInt32Array", [2**32 - 1]), ("UInt64Array", [2**64 - 1, 3]), ("FloatArray", [1.5, -3.25]),
          ("DoubleArray", [0.1, 2.5e300]), ("DateTimeArray", [TS, TS + 1])]


def test_numeric_arrays_from_tahu_become_one_reading_per_element():
    messages = []
    for datatype, items in ARRAYS:
        messages += [death(TS), birth(("a", 3, datatype, items)), data((3, datatype, items[:1]))]
    payloads = encode(messages)
    for index, (datatype, items) in enumerate(ARRAYS):
        _, born, sent = payloads[3 * index:3 * index + 3]
        state = SparkplugState()
        got = values(state.handle(topic("NBIRTH"), born, TS))
        exact = {f"a[{i}]": (str(v) if isinstance(v, int) and abs(v) > 2**53 else float(v))
                 for i, v in enumerate(items)}
        assert got == exact, datatype
        later = state.handle(topic("NDATA"), sent, TS).records  # no datatype: the birth's applies
        assert [(r.value["metric"], r.value["attributes"]["index"]) for r in later] == [("a[0]", "0")], datatype


def test_boolean_and_string_arrays_follow_the_specs_examples():
    # Sparkplug 3.0: [F,F,T,T,F,T,F,F,T,T,F,T] -> count 12 (LE uint32), then bits most significant first.
    bools = [False, False, True, True, False, True, False, False, True, True, False, True]
    packed = bytes([0x0C, 0, 0, 0, 0x34, 0xD0])
    strings = ["ABC", "hello"]
    packed_strings = b"ABC\x00hello\x00"
    payload = spb.encode_payload([spb.Metric("b", bools, spb.DataType.BooleanArray),
                                  spb.Metric("s", strings, spb.DataType.StringArray)], TS, seq=0)
    raw = spb.Payload()
    raw.ParseFromString(payload)
    assert raw.metrics[0].bytes_value == packed and raw.metrics[1].bytes_value == packed_strings
    decoded = spb.decode_payload(payload)
    assert decoded.metrics[0].value == bools and decoded.metrics[1].value == strings


def test_a_malformed_array_is_dead_lettered_with_the_payload():
    payload = spb.Payload()
    payload.seq = 0
    metric = payload.metrics.add()
    metric.name, metric.datatype, metric.bytes_value = "f", int(spb.DataType.FloatArray), b"\x00\x00\x80"
    data = payload.SerializeToString()
    result = SparkplugState().handle(topic("NBIRTH"), data, TS)
    assert result.records == [] and result.dead_letters[0].payload == data
    assert "not a whole number of 4-byte elements" in result.dead_letters[0].reason


def test_ndeath_stale_readings_carry_the_receive_time_not_the_wills():
    _, born, will = encode([death(TS - 60_000), birth(("speed", 1, "Double", 1.0), ("v", 2, "FloatArray", [1.0, 2.0])),
                            {**death(TS - 60_000), "same_session": True}])  # set at CONNECT, before the data
    state = SparkplugState()
    state.handle(topic("NBIRTH"), born, TS)
    stale = state.handle(topic("NDEATH"), will, TS + 5000).records
    assert sorted(r.value["metric"] for r in stale) == ["speed", "v[0]", "v[1]"]
    assert {r.value["observed_at"] for r in stale} == {TS + 5000}


def test_unknown_alias_dead_letter_carries_the_original_bytes():
    _, born, sent = encode([death(TS), birth(("speed", 1, "Double", 1.0)),
                            data((1, "Double", 2.0), (99, "Double", 3.0))])
    state = SparkplugState()
    state.handle(topic("NBIRTH"), born, TS)
    result = state.handle(topic("NDATA"), sent, TS)
    assert [r.value["metric"] for r in result.records] == ["speed"]
    (letter,) = result.dead_letters
    assert letter.payload == sent and "99" in letter.reason and result.rebirth == "unknown alias 99"


def test_losing_the_broker_marks_every_node_and_device_stale_until_born_again():
    _, oven, _, mixer, later = encode([death(TS), birth(("speed", 1, "Double", 1.0)), death(TS),
                                       birth(("torque", 1, "Double", 40.0)), data((1, "Double", 2.0))])
    state = SparkplugState()
    state.handle(topic("NBIRTH"), oven, TS)
    state.handle(spb.topic(G, "NBIRTH", "line1-mixer"), mixer, TS)
    state.handle(spb.topic(G, "DBIRTH", "line1-mixer", "probe"),
                 spb.encode_payload([spb.Metric("h", 1.0, spb.DataType.Double)], TS, seq=1), TS)
    lost = state.connection_lost(TS + 9, "host")
    assert sorted((r.value["device"], r.value["metric"]) for r in lost.records) == [
        ("line1-mixer", "torque"), (N, "speed"), ("probe", "h")]
    assert {r.value["observed_at"] for r in lost.records} == {TS + 9}
    assert state.connection_lost(TS + 10, "host").records == []  # once
    after = state.handle(spb.topic(G, "NDATA", "line1-mixer"), later, TS)
    assert after.rebirth and after.records == []


def test_the_host_subscribes_at_qos_1_and_to_its_own_state_topic():
    class Pipeline:  # only what the constructor reads
        instance = "pod"

        class metrics:  # noqa: N801
            class received:  # noqa: N801
                @staticmethod
                def labels(*_):
                    return None

    host = SparkplugHost(Pipeline(), "mqtt://127.0.0.1:1", "lg", ["bakery1", "bakery2"])
    assert host.subscriptions() == [("spBv1.0/bakery1/#", 1), ("spBv1.0/bakery2/#", 1), ("spBv1.0/STATE/lg", 1)]
    assert SparkplugHost(Pipeline(), "mqtt://127.0.0.1:1", "lg", ["+"]).subscriptions() == [("spBv1.0/+/#", 1)]
