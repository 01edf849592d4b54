"""Payload codecs shared with ingest (Sparkplug B, the LoRaWAN environment sensor) and the scenario files."""

from __future__ import annotations

import contextlib

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lineguard import sparkplug as spb
from lineguard.lorawan import PayloadError, decode_environment, encode_environment
from lineguard.plant import default_plant_path, load_plant
from simulator.clock import SimClock
from simulator.model import AlarmTracker, CookieLine, Reading
from simulator.mqtt_emitters import SparkplugEmitter
from simulator.scenarios import (
    SCENARIOS_DIR,
    ScenarioError,
    available_scenarios,
    load_scenario,
    parse_scenario,
)

PLANT = load_plant(default_plant_path())
LINE = PLANT.lines["line1"]


# --- LoRaWAN ---------------------------------------------------------------------------------------------

def test_environment_payload_matches_the_documented_example():
    assert encode_environment(21.5, 45.0, 3600).hex() == "01086611940e1000"
    assert decode_environment(bytes.fromhex("01086611940e1000")) == {
        "temperature": 21.5, "humidity": 45.0, "battery_mv": 3600, "status": 0}


@pytest.mark.parametrize(("temperature", "humidity"), [(-12.34, 0.0), (0.0, 100.0), (35.67, 71.25)])
def test_environment_payload_round_trips(temperature, humidity):
    decoded = decode_environment(encode_environment(temperature, humidity, 3000))
    assert (decoded["temperature"], decoded["humidity"], decoded["battery_mv"]) == (temperature, humidity, 3000)


def test_failed_sensor_is_flagged_and_decodes_to_none():
    decoded = decode_environment(encode_environment(None, 50.0))
    assert decoded["temperature"] is None and decoded["humidity"] == 50.0 and decoded["status"] == 1


@pytest.mark.parametrize(("payload", "why"), [
    (b"\x01\x02", "expected 8 bytes"),
    (bytes.fromhex("02086611940e1000"), "version"),
    (bytes.fromhex("0108662af90e1000"), "above 100"),
    (bytes.fromhex("01086611940e1080"), "status"),
])
def test_bad_payloads_raise_clear_errors(payload, why):
    with pytest.raises(PayloadError, match=why):
        decode_environment(payload)


# --- Sparkplug B -----------------------------------------------------------------------------------------

def test_sparkplug_round_trip_of_every_supported_type():
    metrics = [
        spb.Metric("i8", -5, spb.DataType.Int8), spb.Metric("i16", -300, spb.DataType.Int16),
        spb.Metric("i32", -70000, spb.DataType.Int32), spb.Metric("i64", -(2**40), spb.DataType.Int64),
        spb.Metric("u32", 4_000_000_000, spb.DataType.UInt32), spb.Metric("u64", 2**60, spb.DataType.UInt64),
        spb.Metric("f", 1.5, spb.DataType.Float), spb.Metric("d", 180.25, spb.DataType.Double, alias=3),
        spb.Metric("b", True, spb.DataType.Boolean), spb.Metric("s", "running", spb.DataType.String),
        spb.Metric("raw", b"\x00\x01", spb.DataType.Bytes), spb.Metric("n", None, spb.DataType.Double),
        spb.Metric("p", 1.0, spb.DataType.Double, properties={"engUnit": "CEL", "scale": 2, "ok": True}),
    ]
    decoded = spb.decode_payload(spb.encode_payload(metrics, 1_700_000_000_000, seq=255))
    assert decoded.seq == 255 and decoded.timestamp_ms == 1_700_000_000_000
    assert [(m.name, m.value) for m in decoded.metrics] == [(m.name, m.value) for m in metrics]
    assert decoded.metric("n").is_null and decoded.metric("d").alias == 3
    assert decoded.metric("p").properties == {"engUnit": "CEL", "scale": 2, "ok": True}


def test_sparkplug_rejects_bad_input():
    with pytest.raises(spb.SparkplugError):
        spb.decode_payload(b"\xff\xff\xff\xff")
    with pytest.raises(spb.SparkplugError, match="seq"):
        spb.encode_payload([], 0, seq=256)
    with pytest.raises(spb.SparkplugError, match="not finite"):
        spb.encode_payload([spb.Metric("x", float("nan"), spb.DataType.Double)], 0, seq=0)


def test_sparkplug_topics():
    assert spb.topic("bakery1", "NBIRTH", "line1-oven") == "spBv1.0/bakery1/NBIRTH/line1-oven"
    assert spb.parse_topic("spBv1.0/bakery1/DDATA/line1-oven/zone2") == spb.Topic("bakery1", "DDATA", "line1-oven",
                                                                                     "zone2")
    for bad in ("spBv1.0/STATE/host", "spBv1.0/g/NDATA", "plant/line1/oven/x/y", "spBv1.0/g/DDATA/node"):
        with pytest.raises(spb.SparkplugError):
            spb.parse_topic(bad)
    with pytest.raises(spb.SparkplugError, match="'/'"):
        spb.topic("bakery/1", "NDATA", "node")


def test_sequence_wraps_after_255():
    seq = spb.Sequence()
    assert [seq.next() for _ in range(257)][-3:] == [255, 0, 1]
    assert seq.reset() == 0


class FakeConnection:
    def __init__(self):
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic, payload, qos=1, retain=False):
        self.sent.append((topic, payload))


def test_sparkplug_edge_node_wraps_seq_and_host_session_follows_it():
    sim = CookieLine(PLANT, seed=1, clock=SimClock(speed=0))
    emitter = SparkplugEmitter()
    emitter.sim, emitter.group_id, emitter.edge_node_id = sim, "bakery1", "line1-oven"
    emitter.alarms = AlarmTracker(LINE)
    emitter._catalogue(sim)
    emitter.connection = FakeConnection()
    emitter.birth()
    for _ in range(600):
        sim.step()
        emitter._data(sim)
    session = spb.EdgeNodeSession("bakery1", "line1-oven")
    seqs = []
    for topic_name, payload in emitter.connection.sent:
        decoded = spb.decode_payload(payload)
        seqs.append(decoded.seq)
        metrics = session.apply(spb.parse_topic(topic_name), decoded)
        assert all(m.name for m in metrics)
    assert seqs[0] == 0 and len(seqs) > 260
    assert all(b == (a + 1) % 256 for a, b in zip(seqs, seqs[1:], strict=False))
    assert not session.needs_rebirth and session.online
    # A lost message is a seq gap: the host asks for a rebirth.
    sim.set_setpoint("oven", "zone1_setpoint", 170.0)
    emitter._data(sim)
    emitter.seq.next()  # skip one
    sim.set_setpoint("oven", "zone1_setpoint", 160.0)
    emitter._data(sim)
    for topic_name, payload in emitter.connection.sent[-2:]:
        session.apply(spb.parse_topic(topic_name), spb.decode_payload(payload))
    assert session.needs_rebirth


# --- alarms ----------------------------------------------------------------------------------------------

def test_alarm_raises_once_and_clears_with_hysteresis():
    tracker = AlarmTracker(LINE)

    def feed(value):
        return tracker.update([Reading("mixer", "torque", "line1-mixer", "torque", value, "NU", 0.0)])

    assert feed(45.0) == []
    raised = feed(37.0)
    assert [(a.alarm, a.state) for a in raised] == [("torque_low", "raise")]
    assert feed(36.0) == [] and feed(38.1) == []  # inside, but not by the hysteresis margin yet
    assert [(a.alarm, a.state) for a in feed(39.0)] == [("torque_low", "clear")]


# --- scenarios -------------------------------------------------------------------------------------------

def test_required_scenarios_ship_and_their_actions_are_within_limits():
    names = set(available_scenarios())
    assert {"oven_zone_overheat", "mixer_torque_loss", "humidity_rise", "conveyor_stop", "thermocouple_failure",
            "normal_run"} <= names
    for name in names:
        scenario = load_scenario(name, LINE)
        expected = scenario.expected
        assert expected.root_cause_text and expected.action_text
        if name == "normal_run":
            assert scenario.fault is None and expected.root_cause_category == "none"
            continue
        assert scenario.fault is not None and scenario.fault.start_s < scenario.duration_s
        assert expected.root_cause_machine in LINE.machines
        change = expected.setpoint_change
        if change:
            setpoint = LINE.machines[change.machine].setpoints[change.parameter]
            assert setpoint.check(change.value) is None
    assert load_scenario("conveyor_stop", LINE).expected.command.action == "start"
    assert load_scenario("thermocouple_failure", LINE).expected.setpoint_change is None


@pytest.mark.parametrize(("edit", "why"), [
    (lambda d: d["fault"].update(type="gremlins"), "unknown fault 'gremlins'"),
    (lambda d: d["fault"].update(machine="toaster"), "no machine 'toaster'"),
    (lambda d: d["fault"].update(zone=7), "zone 1, 2 or 3"),
    (lambda d: d["expected"]["right_action"]["setpoint_change"].update(value=999.0), "outside the limits"),
    (lambda d: d["expected"]["right_action"]["setpoint_change"].update(direction="increase"), "does not lead"),
    (lambda d: d["expected"]["root_cause"].update(category="magic"), "category"),
    (lambda d: d.pop("expected"), "expected: is required"),
])
def test_invalid_scenarios_are_refused_with_the_field_named(edit, why):
    doc = yaml.safe_load((SCENARIOS_DIR / "oven_zone_overheat.yaml").read_text())
    edit(doc)
    with pytest.raises(ScenarioError, match=why):
        parse_scenario(doc, LINE, "test.yaml")


def test_unknown_scenario_lists_the_known_ones():
    with pytest.raises(ScenarioError, match="normal_run"):
        load_scenario("no_such_scenario", LINE)


def test_sparkplug_ncmd_rebirths_and_writes_setpoints_within_limits():
    sim = CookieLine(PLANT, seed=1, clock=SimClock(speed=0))
    emitter = SparkplugEmitter()
    emitter.sim, emitter.group_id, emitter.edge_node_id = sim, "bakery1", "line1-oven"
    emitter.alarms = AlarmTracker(LINE)
    emitter._catalogue(sim)
    emitter.connection = FakeConnection()
    emitter.birth()
    emitter._data(sim)
    alias = emitter.aliases["zone1_setpoint"]
    changes = emitter.command([
        spb.Metric(None, 175.0, spb.DataType.Double, alias=alias),
        spb.Metric("belt_speed_setpoint", 9.0, spb.DataType.Double),  # outside [2, 4]: refused
        spb.Metric("zone1_temperature", 100.0, spb.DataType.Double),  # a reading: not writable
    ])
    assert [(c["parameter"], c["previous"], c["value"], c["source"]) for c in changes] == [
        ("zone1_setpoint", 180.0, 175.0, "sparkplug")]
    assert sim.machines["oven"].setpoints["belt_speed"] == 3.0
    emitter.command([spb.Metric(spb.REBIRTH_METRIC, True, spb.DataType.Boolean)])
    topic_name, payload = emitter.connection.sent[-1]
    rebirth = spb.decode_payload(payload)
    assert topic_name.endswith("/NBIRTH/line1-oven") and rebirth.seq == 0
    assert rebirth.metric("zone1_setpoint").value == 175.0


@given(temperature=st.floats(-327.68, 327.67), humidity=st.floats(0.0, 100.0), battery=st.integers(0, 65535))
def test_environment_codec_round_trips_to_its_resolution(temperature, humidity, battery):
    decoded = decode_environment(encode_environment(temperature, humidity, battery))
    assert abs(decoded["temperature"] - temperature) <= 0.005 + 1e-9
    assert abs(decoded["humidity"] - humidity) <= 0.005 + 1e-9 and decoded["battery_mv"] == battery


@given(st.binary(max_size=64))
def test_environment_decoder_never_crashes_on_garbage(payload):
    with contextlib.suppress(PayloadError):
        decode_environment(payload)


@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=20),
       seq=st.integers(0, 255), ints=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=5))
def test_sparkplug_values_survive_the_wire(values, seq, ints):
    metrics = [spb.Metric(f"d{i}", v, spb.DataType.Double, alias=i) for i, v in enumerate(values)]
    metrics += [spb.Metric(f"i{i}", v, spb.DataType.Int32) for i, v in enumerate(ints)]
    decoded = spb.decode_payload(spb.encode_payload(metrics, 1, seq))
    assert decoded.seq == seq
    assert [m.value for m in decoded.metrics] == values + ints


@given(st.binary(max_size=64))
def test_sparkplug_decoder_raises_its_own_error_on_garbage(payload):
    with contextlib.suppress(spb.SparkplugError):
        spb.decode_payload(payload)
