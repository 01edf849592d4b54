"""Raw records -> unified records: entities, units, quality flags, alarms, inspections and the bad cases."""

from __future__ import annotations

import logging

import pytest

from lineguard.avro import AvroSerde
from lineguard.kafka import Record
from lineguard.plant import default_plant_path, load_plant
from services.normalizer.mapping import (
    ALARMS,
    INSPECTIONS,
    OBSERVATIONS,
    InvalidTimestampError,
    InvalidUnitError,
    InvalidValueError,
    NormalizeError,
    Normalizer,
    UnknownDeviceError,
    UnknownLineError,
    UnknownMetricError,
    to_epoch_ms,
)

T0 = 1_764_400_000_000  # 2025-11-29T07:06:40Z


@pytest.fixture(scope="module")
def plant():
    return load_plant(default_plant_path())


@pytest.fixture
def normalizer(plant) -> Normalizer:
    return Normalizer(plant)


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde()


def reading(device: str = "line1-oven", metric: str = "zone1_temperature", value: object = 180.0,
            unit: str | None = None, observed_at: int = T0, received_at: int = T0 + 50, rid: str = "r1") -> dict:
    return {"id": rid, "device": device, "metric": metric, "value": value, "unit": unit,
            "observed_at": observed_at, "received_at": received_at,
            "source": {"protocol": "sparkplug", "device": device, "address": "spBv1.0/bakery1/DDATA/line1-oven",
                       "position": "7", "received_by": "ingest-0"}, "attributes": {}}


def alarm(action: str, rid: str, observed_at: int, device: str = "line1-oven", alarm_type: str = "OVEN_ZONE1_HIGH",
          severity: str | None = "major", message: str | None = "zone 1 above limit") -> dict:
    return {"id": rid, "device": device, "alarm_type": alarm_type, "action": action, "severity": severity,
            "message": message, "observed_at": observed_at, "received_at": observed_at + 10,
            "source": {"protocol": "mqtt", "device": device, "address": "plant/line1/oven/alarms", "position": None,
                       "received_by": None}}


def inspection(verdict: str = "defective", station: str = "detector", line_id: str = "line1",
               defects: list | None = None) -> dict:
    if defects is None:
        defects = [{"defect_class": "burnt", "confidence": 0.93, "box": [10, 10, 40, 40], "reason": "dark"}]
    return {"id": "line1-detector-item42", "item_id": "item42", "line_id": line_id, "station": station,
            "captured_at": T0, "inspected_at": T0 + 30, "verdict": verdict, "defects": defects,
            "image_uri": "file:///frames/item42.png",
            "model": {"provider": "local", "model_id": "cookie-detector", "version": "1"}, "latency_ms": 4.2}


# --- observations -----------------------------------------------------------------------------------------


def test_reading_maps_to_its_machine_sensor_and_attribute(normalizer: Normalizer, serde: AvroSerde) -> None:
    out = normalizer.observation(reading())
    assert out["id"] == "obs:r1" and out["raw_id"] == "r1"
    assert out["line_id"] == "line1"
    assert out["entity_id"] == "urn:ngsi-ld:Machine:line1-oven"
    assert out["entity_type"] == "Machine"
    assert out["sensor_id"] == "urn:ngsi-ld:Sensor:line1-oven-zone1_temperature"
    assert out["attribute"] == "zone1_temperature"
    assert out["value"] == 180.0 and out["unit_code"] == "CEL"
    assert out["observed_at"] == T0 and out["quality"] == []
    serde.check(OBSERVATIONS, out)  # fits the published schema


def test_lorawan_device_and_metric_map_to_the_environment(normalizer: Normalizer) -> None:
    out = normalizer.observation(reading(device="a84041000181c061", metric="temperature", value=71.6, unit="degF"))
    assert out["entity_id"] == "urn:ngsi-ld:Machine:line1-environment"
    assert out["attribute"] == "ambient_temperature"
    assert out["value"] == pytest.approx(22.0) and out["unit_code"] == "CEL"


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (356.0, "degF", 180.0), (453.15, "K", 180.0), (180.0, "Cel", 180.0), ("180.5", None, 180.5),
])
def test_temperatures_are_converted_to_celsius(normalizer: Normalizer, value, unit, expected) -> None:
    assert normalizer.observation(reading(value=value, unit=unit))["value"] == pytest.approx(expected)


def test_mixer_speed_in_hertz_becomes_rpm(normalizer: Normalizer) -> None:
    out = normalizer.observation(reading(device="line1-mixer", metric="speed", value=1.2, unit="Hz"))
    assert out["value"] == pytest.approx(72.0) and out["unit_code"] == "RPM" and out["quality"] == []


def test_out_of_normal_range_is_flagged_not_rejected(normalizer: Normalizer) -> None:
    out = normalizer.observation(reading(value=230.0))
    assert out["quality"] == ["out_of_range"] and out["value"] == 230.0


def test_stale_reading_is_flagged(normalizer: Normalizer) -> None:
    out = normalizer.observation(reading(observed_at=T0, received_at=T0 + 301_000))
    assert out["quality"] == ["stale"]
    assert normalizer.observation(reading(observed_at=T0, received_at=T0 + 299_000))["quality"] == []


def test_a_sources_stale_marker_passes_on_as_a_stale_observation_not_a_dead_letter(normalizer: Normalizer) -> None:
    """A Sparkplug NDEATH (or the host losing its broker) marks every metric stale with a null value: that is news
    for the line, and a plant-wide death must not fill the DLQ (and trip its limit, stopping the normalizer)."""
    normalizer.observation(reading(value=180.0, rid="before"))
    marker = {**reading(value=None, rid="stale", received_at=T0 + 60), "attributes": {"quality": "stale"}}
    out = normalizer.observation(marker)
    assert out["value"] is None and out["quality"] == ["stale"] and out["unit_code"] == "CEL"
    state = {**reading(device="line1-cooling-conveyor", metric="state", value=None, rid="s"),
             "attributes": {"quality": "stale"}}
    assert normalizer.observation(state)["quality"] == ["stale"]
    with pytest.raises(InvalidValueError):  # a null without the marker is still bad input
        normalizer.observation(reading(value=None, rid="bad"))


def test_slightly_impossible_percentage_is_clamped_and_flagged(normalizer: Normalizer) -> None:
    out = normalizer.observation(reading(device="a84041000181c061", metric="humidity", value=101.5, unit="%"))
    assert out["value"] == 100.0
    assert out["quality"] == ["clamped", "out_of_range"]


def test_state_attribute_keeps_its_string(normalizer: Normalizer) -> None:
    out = normalizer.observation(reading(device="line1-cooling-conveyor", metric="state", value=" Stopped"))
    assert out["value"] == "stopped" and out["unit_code"] is None and out["quality"] == []


def test_timestamps_in_seconds_or_microseconds_become_milliseconds(normalizer: Normalizer) -> None:
    out = normalizer.observation(reading(observed_at=T0 // 1000, received_at=(T0 + 50) * 1000))
    assert out["observed_at"] == T0 and out["quality"] == []
    assert to_epoch_ms(T0 * 1_000_000, "t") == T0


def test_the_latest_value_of_each_attribute_is_kept(normalizer: Normalizer) -> None:
    normalizer.observation(reading(value=181.0, observed_at=T0 + 1000, received_at=T0 + 1000))
    normalizer.observation(reading(value=170.0, observed_at=T0, received_at=T0 + 2000))  # late, older
    prop = normalizer.latest_property("urn:ngsi-ld:Machine:line1-oven", "zone1_temperature")
    assert prop == {"type": "Property", "value": 181.0, "unitCode": "CEL", "observedAt": T0 + 1000}


# --- bad readings -----------------------------------------------------------------------------------------


def test_unknown_device_is_rejected_and_logged_once(normalizer: Normalizer, caplog) -> None:
    caplog.set_level(logging.WARNING)
    for i in range(5):
        with pytest.raises(UnknownDeviceError, match="unknown device 'line9-toaster'"):
            normalizer.observation(reading(device="line9-toaster", rid=f"x{i}"))
    logged = [r for r in caplog.records if r.getMessage() == "unknown_device_seen"]
    assert len(logged) == 1


def test_unknown_metric_of_a_known_device_names_the_known_ones(normalizer: Normalizer) -> None:
    with pytest.raises(UnknownMetricError, match="no metric 'pressure'.*known: .*zone1_temperature"):
        normalizer.observation(reading(metric="pressure"))


@pytest.mark.parametrize(("value", "unit", "error", "why"), [
    (None, None, InvalidValueError, "expected a number"),
    (True, None, InvalidValueError, "expected a number"),
    ("hot", None, InvalidValueError, "expected a number"),
    (float("nan"), None, InvalidValueError, "not a finite number"),
    (-300.0, None, InvalidValueError, "physical minimum"),
    (-5.0, "K", InvalidValueError, "physical minimum"),
    (2.0, "bar", InvalidUnitError, "cannot convert"),
    (2.0, "parsecs", InvalidUnitError, "unknown unit"),
])
def test_impossible_values_and_units_are_rejected_with_the_reason(normalizer: Normalizer, value, unit, error,
                                                                  why) -> None:
    with pytest.raises(error, match=why):
        normalizer.observation(reading(value=value, unit=unit))


def test_unknown_state_is_rejected(normalizer: Normalizer) -> None:
    with pytest.raises(InvalidValueError, match="unknown state 'flying'"):
        normalizer.observation(reading(device="line1-cooling-conveyor", metric="state", value="flying"))


@pytest.mark.parametrize(("observed_at", "received_at", "why"), [
    (0, T0, "not a positive epoch timestamp"),
    (-5, T0, "not a positive epoch timestamp"),
    (T0 + 2 * 3_600_000, T0, "allowed clock skew"),
])
def test_impossible_timestamps_are_rejected(normalizer: Normalizer, observed_at, received_at, why) -> None:
    with pytest.raises(InvalidTimestampError, match=why):
        normalizer.observation(reading(observed_at=observed_at, received_at=received_at))


def test_every_rejection_is_a_normalize_error(normalizer: Normalizer) -> None:
    for bad in (reading(device="nope"), reading(value="x"), reading(unit="bar"), reading(observed_at=0)):
        with pytest.raises(NormalizeError):
            normalizer.observation(bad)


# --- alarms -----------------------------------------------------------------------------------------------


def test_raise_then_clear_becomes_one_alarm_with_duration(normalizer: Normalizer, serde: AvroSerde) -> None:
    raised = normalizer.alarm(alarm("raise", "a1", T0))
    assert raised["alarm_id"] == "urn:ngsi-ld:Alert:line1-oven-OVEN_ZONE1_HIGH"
    assert raised["state"] == "active" and raised["raise_count"] == 1
    assert raised["raised_at"] == T0 and raised["cleared_at"] is None and raised["duration_ms"] is None
    assert raised["entity_id"] == "urn:ngsi-ld:Machine:line1-oven" and raised["line_id"] == "line1"
    assert raised["severity"] == "major" and raised["raw_id"] == "a1"
    cleared = normalizer.alarm(alarm("clear", "a2", T0 + 90_000, severity=None))
    assert cleared["alarm_id"] == raised["alarm_id"]
    assert cleared["state"] == "cleared" and cleared["cleared_at"] == T0 + 90_000
    assert cleared["duration_ms"] == 90_000 and cleared["raised_at"] == T0
    assert cleared["severity"] == "major"
    serde.check(ALARMS, raised)
    serde.check(ALARMS, cleared)


def test_repeated_raise_updates_the_active_alarm(normalizer: Normalizer) -> None:
    first = normalizer.alarm(alarm("raise", "a1", T0))
    second = normalizer.alarm(alarm("RAISE", "a2", T0 + 5000, severity="critical", message="still high"))
    assert second["alarm_id"] == first["alarm_id"]
    assert second["raise_count"] == 2 and second["raised_at"] == T0
    assert second["severity"] == "critical" and second["message"] == "still high"
    assert normalizer.alarms.active_count() == 1


def test_a_new_activation_after_a_clear_starts_again(normalizer: Normalizer) -> None:
    normalizer.alarm(alarm("raise", "a1", T0))
    normalizer.alarm(alarm("clear", "a2", T0 + 1000))
    again = normalizer.alarm(alarm("raise", "a3", T0 + 9000))
    assert again["raise_count"] == 1 and again["raised_at"] == T0 + 9000 and again["state"] == "active"


def test_alarms_of_other_types_and_devices_are_separate(normalizer: Normalizer) -> None:
    a = normalizer.alarm(alarm("raise", "a1", T0))
    b = normalizer.alarm(alarm("raise", "a2", T0, alarm_type="OVEN_ZONE2_HIGH"))
    c = normalizer.alarm(alarm("raise", "a3", T0, device="line1-cooling-conveyor", alarm_type="CONVEYOR_STOPPED"))
    assert len({a["alarm_id"], b["alarm_id"], c["alarm_id"]}) == 3
    assert c["entity_id"] == "urn:ngsi-ld:Machine:line1-cooling-conveyor"
    assert normalizer.alarms.active_count() == 3


def test_clear_without_a_seen_raise_closes_without_duration(normalizer: Normalizer) -> None:
    out = normalizer.alarm(alarm("clear", "a9", T0))
    assert out["state"] == "cleared" and out["duration_ms"] is None and out["raise_count"] == 0


def test_a_raw_alarm_seen_again_gives_the_same_output_without_counting_again(normalizer: Normalizer) -> None:
    normalizer.alarm(alarm("raise", "a1", T0))
    second = normalizer.alarm(alarm("raise", "a2", T0 + 1))
    replayed = normalizer.alarm(alarm("raise", "a2", T0 + 1))  # the loop rewound the batch
    assert replayed == second and replayed["raise_count"] == 2
    assert normalizer.alarm(alarm("raise", "a3", T0 + 2))["raise_count"] == 3


def test_state_restored_from_published_changes_continues_across_a_restart(plant) -> None:
    before = Normalizer(plant)
    published = [before.alarm(alarm("raise", "a1", T0)), before.alarm(alarm("raise", "a2", T0 + 1000)),
                 before.alarm(alarm("raise", "b1", T0, alarm_type="OVEN_ZONE2_HIGH")),
                 before.alarm(alarm("clear", "b2", T0 + 500, alarm_type="OVEN_ZONE2_HIGH"))]
    after = Normalizer(plant)  # a restart: new process, state read back from line.alarms.v1
    assert after.alarms.restore(published) == 4
    assert after.alarms.active_count() == 1
    replayed = after.alarm(alarm("raise", "a2", T0 + 1000))  # replayed from the committed offset: no recount
    assert replayed == published[1]
    cleared = after.alarm(alarm("clear", "a3", T0 + 61_000))
    assert cleared["state"] == "cleared" and cleared["raised_at"] == T0
    assert cleared["duration_ms"] == 61_000 and cleared["raise_count"] == 2
    again = after.alarm(alarm("raise", "b3", T0 + 2000, alarm_type="OVEN_ZONE2_HIGH"))
    assert again["raise_count"] == 1 and again["raised_at"] == T0 + 2000


@pytest.mark.parametrize(("given", "expected"), [
    ("CRITICAL", "critical"), ("high", "major"), ("warn", "warning"), (None, "indeterminate"), ("weird", "indeterminate"),
])
def test_severities_are_normalized(normalizer: Normalizer, given, expected) -> None:
    assert normalizer.alarm(alarm("raise", "a1", T0, severity=given))["severity"] == expected


def test_bad_alarms_are_rejected(normalizer: Normalizer) -> None:
    with pytest.raises(InvalidValueError, match="neither a raise nor a clear"):
        normalizer.alarm(alarm("explode", "a1", T0))
    with pytest.raises(UnknownDeviceError):
        normalizer.alarm(alarm("raise", "a1", T0, device="line7-press"))
    with pytest.raises(InvalidTimestampError):
        normalizer.alarm(alarm("raise", "a1", -1))


# --- inspections ------------------------------------------------------------------------------------------


def test_inspection_is_joined_with_the_asset_graph(normalizer: Normalizer, serde: AvroSerde) -> None:
    out = normalizer.inspection(inspection())
    assert out["line_entity_id"] == "urn:ngsi-ld:Line:line1"
    assert out["station_entity_id"] == "urn:ngsi-ld:Machine:line1-detector"
    assert out["upstream"][0] == "urn:ngsi-ld:Machine:line1-cooling-conveyor"
    assert "urn:ngsi-ld:Machine:line1-oven" in out["upstream"]
    assert "urn:ngsi-ld:Machine:line1-mixer" in out["upstream"]
    assert out["id"] == "line1-detector-item42" and out["verdict"] == "defective"
    serde.check(INSPECTIONS, out)


def test_an_abstention_passes_as_not_judged(normalizer: Normalizer, serde: AvroSerde) -> None:
    raw = {**inspection("abstained", defects=[]),
           "abstention": {"reason": "unfamiliar", "message": "unlike the training images"}}
    out = normalizer.inspection(raw)
    assert out["verdict"] == "abstained" and out["defects"] == []
    assert out["abstention"] == raw["abstention"]
    serde.check(INSPECTIONS, out)
    with pytest.raises(InvalidValueError, match="no defects"):
        normalizer.inspection({**raw, "defects": inspection()["defects"]})


@pytest.mark.parametrize(("kwargs", "error", "why"), [
    ({"line_id": "line9"}, UnknownLineError, "unknown line 'line9'"),
    ({"station": "roof"}, UnknownLineError, "no station 'roof'"),
    ({"verdict": "maybe"}, InvalidValueError, "neither ok nor defective"),
    ({"defects": [{"defect_class": "burnt", "confidence": 1.7, "box": [], "reason": None}]}, InvalidValueError,
     "not in"),
    ({"defects": [{"defect_class": "burnt", "confidence": 0.5, "box": [1, 2], "reason": None}]}, InvalidValueError,
     "box"),
])
def test_bad_inspections_are_rejected(normalizer: Normalizer, kwargs, error, why) -> None:
    with pytest.raises(error, match=why):
        normalizer.inspection(inspection(**kwargs))


# --- dispatch ---------------------------------------------------------------------------------------------


def test_handle_routes_each_raw_topic_to_its_unified_topic_keyed_by_line(normalizer: Normalizer) -> None:
    def rec(topic: str, value: dict, offset: int = 0) -> Record:
        return Record(topic, 0, offset, b"k", value, [], T0, None)

    [obs] = normalizer.handle(rec("raw.telemetry.v1", reading()))
    [alm] = normalizer.handle(rec("raw.alarms.v1", alarm("raise", "a1", T0)))
    [ins] = normalizer.handle(rec("raw.inspections.v1", inspection()))
    assert (obs.topic, obs.key) == (OBSERVATIONS, "line1")
    assert (alm.topic, alm.key) == (ALARMS, "line1")
    assert (ins.topic, ins.key) == (INSPECTIONS, "line1")
    with pytest.raises(NormalizeError, match="does not read topic"):
        normalizer.handle(rec("feedback.v1", {}))
