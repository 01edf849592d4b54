"""The service's handler (counting, lake rows) and its settings."""

from __future__ import annotations

import pytest

from lineguard.kafka import Record
from lineguard.plant import default_plant_path, load_plant
from lineguard.settings import SettingsError
from services.normalizer.mapping import Normalizer, UnknownDeviceError
from services.normalizer.service import Pipeline
from services.normalizer.settings import NormalizerSettings

T0 = 1_764_400_000_000


def raw(device: str = "line1-mixer") -> dict:
    return {"id": "r1", "device": device, "metric": "torque", "value": 45.0, "unit": "Nm", "observed_at": T0,
            "received_at": T0, "source": {"protocol": "mqtt", "device": device, "address": "a", "position": None,
                                          "received_by": None}, "attributes": {}}


def test_the_lake_row_is_the_handled_records_output() -> None:
    pipeline = Pipeline(Normalizer(load_plant(default_plant_path())), "normalizer-unit-test")
    record = Record("raw.telemetry.v1", 4, 17, b"line1-mixer", raw(), [], T0, None)
    outputs = pipeline.handle(record)
    [out] = outputs
    assert out.key == "line1" and out.value["value"] == 45.0
    table, row = pipeline.lake_row(record, outputs)  # what the loop hands the lake sink with the record
    assert table == "observations" and row is out.value
    assert pipeline.lake_row(record, []) is None
    assert Pipeline(pipeline.normalizer, "normalizer-unit-test", lake=False).lake_row(record, outputs) is None


def test_pipeline_lets_rejections_through_to_the_loop() -> None:
    pipeline = Pipeline(Normalizer(load_plant(default_plant_path())), "normalizer-unit-test")
    record = Record("raw.telemetry.v1", 0, 1, b"x", raw("ghost"), [], T0, None)
    with pytest.raises(UnknownDeviceError):
        pipeline.handle(record)
    assert pipeline.rejected == {("observations", "UnknownDeviceError"): 1}


def test_settings_come_from_the_environment() -> None:
    settings = NormalizerSettings.from_env(environ={"LINEGUARD_LAKE_URL": "s3://bucket/lake",
                                                    "LINEGUARD_LAKE_MAX_ROWS": "500",
                                                    "LINEGUARD_HTTP_PORT": "9000"})
    assert settings.lake_url == "s3://bucket/lake" and settings.lake_max_rows == 500
    assert settings.http_port == 9000 and settings.service_name == "normalizer"


@pytest.mark.parametrize(("env", "why"), [
    ({"LINEGUARD_LAKE_URL": "gs://bucket"}, "expected s3://"),
    ({"LINEGUARD_LAKE_URL": "s3:///prefix"}, "bucket name is missing"),
    ({"LINEGUARD_LAKE_MAX_ROWS": "0"}, "LINEGUARD_LAKE_MAX_ROWS"),
    ({"LINEGUARD_LAKE_COMPRESSION": "lzma"}, "LINEGUARD_LAKE_COMPRESSION"),
])
def test_bad_settings_name_the_variable(env: dict, why: str) -> None:
    with pytest.raises(SettingsError, match=why):
        NormalizerSettings.from_env(environ=env)


def test_counters_reach_prometheus_at_scrape_time() -> None:
    from prometheus_client import REGISTRY, generate_latest

    pipeline = Pipeline(Normalizer(load_plant(default_plant_path())), "normalizer-metrics-test")
    for offset in range(3):
        pipeline.handle(Record("raw.telemetry.v1", 0, offset, b"k", raw(), [], T0, None))
    for offset in range(2):
        with pytest.raises(UnknownDeviceError):
            pipeline.handle(Record("raw.telemetry.v1", 0, 10 + offset, b"k", raw("ghost"), [], T0, None))
    text = generate_latest(REGISTRY).decode()
    assert 'lineguard_normalizer_metrics_test_records_in_total{kind="observations"} 5.0' in text
    assert 'lineguard_normalizer_metrics_test_records_out_total{kind="observations"} 3.0' in text
    assert ('lineguard_normalizer_metrics_test_records_rejected_total{kind="observations",'
            'reason="UnknownDeviceError"} 2.0') in text
    assert "lineguard_normalizer_metrics_test_unknown_devices_total 1.0" in text
