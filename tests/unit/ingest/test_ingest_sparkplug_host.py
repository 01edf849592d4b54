"""The Sparkplug B host state machine: births, aliases, seq gaps, deaths and stale metrics, fuzzed input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lineguard import sparkplug as spb
from lineguard.avro import AvroSerde
from services.ingest.sparkplug_host import SparkplugState

SERDE = AvroSerde(None, None, None, "")
G, N = "bakery1", "line1-oven"
T = 1_790_000_000_000


def topic(kind: str, device: str | None = None) -> str:
    return spb.topic(G, kind, N, device)


def nbirth(bd_seq: int = 3) -> bytes:
    return spb.encode_payload([
        spb.Metric(spb.BDSEQ_METRIC, bd_seq, spb.DataType.Int64),
        spb.Metric(spb.REBIRTH_METRIC, False, spb.DataType.Boolean),
        spb.Metric("zone1_temperature", 180.5, spb.DataType.Double, alias=1, properties={"engUnit": "CEL"}),
        spb.Metric("state", "running", spb.DataType.String, alias=2),
        spb.Metric("Alarms/zone1_temperature_high", False, spb.DataType.Boolean, alias=3),
    ], T, seq=0)


def ndata(seq: int, **by_alias) -> bytes:
    kinds = {1: spb.DataType.Double, 2: spb.DataType.String, 3: spb.DataType.Boolean, 9: spb.DataType.Double}
    return spb.encode_payload([spb.Metric(None, v, kinds[int(a[1:])], alias=int(a[1:]), timestamp_ms=T + seq)
                               for a, v in by_alias.items()], T + seq, seq=seq)


def test_birth_then_data_by_alias_resolves_names_and_units():
    state = SparkplugState("pod-1")
    birth = state.handle(topic("NBIRTH"), nbirth(), T)
    assert {r.value["metric"] for r in birth.records} == {"zone1_temperature", "state"}
    data = state.handle(topic("NDATA"), ndata(1, a1=195.0), T)
    (record,) = data.records
    assert (record.value["metric"], record.value["value"], record.value["unit"]) == ("zone1_temperature", 195.0, "CEL")
    assert record.value["device"] == N and record.value["source"]["position"] == "1"
    assert record.value["source"]["device"] == f"{G}/{N}" and record.value["source"]["protocol"] == "sparkplug"
    assert record.id == f"sparkplug:{G}/{N}:zone1_temperature:{T + 1}"
    assert data.rebirth is None
    for emit in birth.records + data.records:
        SERDE.encode(emit.topic, emit.value)


def test_alarm_metrics_become_raise_and_clear():
    state = SparkplugState()
    state.handle(topic("NBIRTH"), nbirth(), T)
    raised = state.handle(topic("NDATA"), ndata(1, a3=True), T).records
    cleared = state.handle(topic("NDATA"), ndata(2, a3=False), T).records
    assert [(r.topic, r.value["alarm_type"], r.value["action"]) for r in raised + cleared] == [
        ("raw.alarms.v1", "zone1_temperature_high", "raise"), ("raw.alarms.v1", "zone1_temperature_high", "clear")]


def test_seq_gap_data_before_birth_and_unknown_alias_ask_for_rebirth():
    state = SparkplugState()
    early = state.handle(topic("NDATA"), ndata(5, a1=1.0), T)
    assert early.rebirth and early.records == [] and "before its NBIRTH" in early.dead_letters[0].reason
    state.handle(topic("NBIRTH"), nbirth(), T)
    gap = state.handle(topic("NDATA"), ndata(4, a1=181.0), T)
    assert gap.rebirth.startswith("seq gap") and len(gap.records) == 1  # still ingested
    unknown = state.handle(topic("NDATA"), ndata(5, a9=1.0), T)
    assert unknown.rebirth == "unknown alias 9" and unknown.dead_letters


def test_seq_wraps_without_a_rebirth():
    state = SparkplugState()
    state.handle(topic("NBIRTH"), nbirth(), T)
    for seq in list(range(1, 256)) + [0, 1]:
        assert state.handle(topic("NDATA"), ndata(seq, a1=float(seq)), T).rebirth is None


def test_death_marks_node_and_device_metrics_stale_and_an_old_will_is_ignored():
    state = SparkplugState()
    state.handle(topic("NBIRTH"), nbirth(bd_seq=3), T)
    dbirth = spb.encode_payload([spb.Metric("humidity", 40.0, spb.DataType.Double, alias=20)], T, seq=1)
    assert state.handle(topic("DBIRTH", "probe1"), dbirth, T).records[0].value["device"] == "probe1"
    ddata = spb.encode_payload([spb.Metric(None, 41.0, spb.DataType.Double, alias=20)], T, seq=2)
    assert state.handle(topic("DDATA", "probe1"), ddata, T).records[0].value["metric"] == "humidity"
    old_will = spb.encode_payload([spb.Metric(spb.BDSEQ_METRIC, 2, spb.DataType.Int64)], T, seq=None)
    assert state.handle(topic("NDEATH"), old_will, T).records == []
    death = spb.encode_payload([spb.Metric(spb.BDSEQ_METRIC, 3, spb.DataType.Int64)], T + 9, seq=None)
    stale = state.handle(topic("NDEATH"), death, T).records
    assert {(r.value["device"], r.value["metric"]) for r in stale} == {
        (N, "zone1_temperature"), (N, "state"), ("probe1", "humidity")}
    assert all(r.value["value"] is None and r.value["attributes"]["quality"] == "stale" for r in stale)
    after = state.handle(topic("NDATA"), ndata(3, a1=1.0), T)
    assert after.rebirth and after.records == []


def test_ddeath_marks_only_that_device_stale():
    state = SparkplugState()
    state.handle(topic("NBIRTH"), nbirth(), T)
    state.handle(topic("DBIRTH", "p"), spb.encode_payload([spb.Metric("h", 1.0, spb.DataType.Double)], T, seq=1), T)
    stale = state.handle(topic("DDEATH", "p"), spb.encode_payload([], T, seq=2), T).records
    assert [(r.value["device"], r.value["attributes"]["quality"]) for r in stale] == [("p", "stale")]
    again = state.handle(topic("DDATA", "p"), spb.encode_payload([spb.Metric("h", 2.0, spb.DataType.Double)], T,
                                                                 seq=3), T)
    assert again.rebirth and again.records == []


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(st.tuples(
    st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "bogus"]),
    st.one_of(st.binary(max_size=40), st.builds(
        lambda seq, values: spb.encode_payload(
            [spb.Metric(None if i % 2 else f"m{i}", v, spb.DataType.Double, alias=i) for i, v in enumerate(values)],
            T, seq=seq),
        st.integers(0, 255), st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4)))),
    max_size=12))
def test_fuzzed_message_sequences_never_crash_and_every_record_fits_the_schema(messages):
    state = SparkplugState()
    for kind, payload in messages:
        device = "d1" if kind.startswith("D") else None
        name = f"spBv1.0/{G}/{kind}/{N}" + (f"/{device}" if device else "")
        result = state.handle(name, payload, T)
        for emit in result.records:
            SERDE.encode(emit.topic, emit.value)
        for letter in result.dead_letters:
            assert letter.reason
