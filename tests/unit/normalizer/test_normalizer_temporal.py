"""The temporal API's parts without a broker: the lake (written by the real LakeWriter) and the in-memory ring
overlap in a running service, and an observation in both counts once; durations and intervals as specified."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lineguard.health import Health
from lineguard.kafka import Record
from lineguard.plant import default_plant_path, load_plant
from services.normalizer.api import AssetGraphApi
from services.normalizer.lake import LakeWriter, LocalStore
from services.normalizer.mapping import Normalizer
from services.normalizer.service import build_app
from services.normalizer.temporal import Interval, TemporalQueryError, interval, parse_duration_ms

T0 = 1_764_399_600_000  # 2025-11-29T07:00:00Z
OVEN = "urn:ngsi-ld:Machine:line1-oven"
TOKEN = "t"


def reading(i: int) -> dict:
    return {"id": f"r{i}", "device": "line1-oven", "metric": "zone1_temperature", "value": 170.0 + (i % 2) * 20,
            "unit": "CEL", "observed_at": T0 + i * 60_000, "received_at": T0 + i * 60_000,
            "source": {"protocol": "mqtt", "device": "line1-oven", "address": "x", "position": None,
                       "received_by": None}, "attributes": {}}


def get(api: AssetGraphApi, path: str) -> tuple[int, Any]:
    async def run() -> tuple[int, Any]:
        async with TestClient(TestServer(build_app(Health("t"), api))) as client:
            response = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            return response.status, await response.json(content_type=None)

    return asyncio.run(run())


def test_an_observation_in_the_lake_and_in_memory_counts_once(tmp_path: Path) -> None:
    normalizer = Normalizer(load_plant(default_plant_path()))
    rows = {}
    for i in range(30):
        rows[i] = ("observations", normalizer.observation(reading(i)))  # all 30 are in memory
    lake = LakeWriter(LocalStore(tmp_path), lambda r, _: rows[r.offset], max_rows=10,
                      rotate_interval_ms=86_400_000)
    lake.write([(Record("raw.telemetry.v1", 0, i, None, None, [], 0, None), []) for i in range(30)])
    lake.flush()  # and all 30 in the lake
    api = AssetGraphApi(normalizer, token=TOKEN, lake=LocalStore(tmp_path))
    base = f"/ngsi-ld/v1/temporal/entities/{OVEN}?attrs=zone1_temperature&timerel=between" \
           "&timeAt=2025-11-29T07:00:00Z&endTimeAt=2025-11-29T08:00:00Z"
    status, body = get(api, base)
    assert status == 200, body
    assert len(body["zone1_temperature"]) == 30
    status, body = get(api, base + "&aggrMethods=totalCount,avg&aggrPeriodDuration=PT30M")
    assert [v for v, _, _ in body["zone1_temperature"]["totalCount"]] == [30]
    assert body["zone1_temperature"]["avg"][0] == [180.0, "2025-11-29T07:00:00.000Z", "2025-11-29T07:30:00.000Z"]
    offset = base.replace("07:00:00Z", "08:00:00+01:00").replace("08:00:00Z", "09:00:00%2B01:00")
    assert len(get(api, offset)[1]["zone1_temperature"]) == 30  # offsets, with '+' encoded or not
    # without the lake, memory alone answers the same
    assert len(get(AssetGraphApi(normalizer, token=TOKEN), base)[1]["zone1_temperature"]) == 30


def test_too_many_instances_is_403(tmp_path: Path) -> None:
    normalizer = Normalizer(load_plant(default_plant_path()))
    for i in range(30):
        normalizer.observation(reading(i))
    api = AssetGraphApi(normalizer, token=TOKEN, max_temporal_instances=10)
    status, body = get(api, f"/ngsi-ld/v1/temporal/entities/{OVEN}?timerel=after&timeAt=2025-11-29T06:00:00Z")
    assert status == 403 and body["type"].endswith("/TooManyResults")
    status, body = get(api, f"/ngsi-ld/v1/temporal/entities/{OVEN}?timerel=after&timeAt=2025-11-29T06:00:00Z"
                            "&lastN=5")
    assert status == 200 and len(body["zone1_temperature"]) == 5


@pytest.mark.parametrize(("text", "ms"), [("PT1M", 60_000), ("PT1H30M", 5_400_000), ("P1D", 86_400_000),
                                          ("P1W", 604_800_000), ("PT0.5S", 500), ("P0D", 0)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["P1M", "P1Y", "PT", "P", "1H", "PT1H1", ""])
def test_durations_without_fixed_length_or_malformed_are_rejected(text: str) -> None:
    with pytest.raises(TemporalQueryError):
        parse_duration_ms(text)


def test_intervals() -> None:
    assert interval("before", 100, None) == Interval(None, 100)
    assert interval("after", 100, None) == Interval(101, None)
    assert interval("between", 100, 200) == Interval(100, 200)
    for args in [("between", 100, None), ("between", 200, 100), ("sometime", 1, 2), (None, 1, None),
                 ("before", None, None)]:
        with pytest.raises(TemporalQueryError):
            interval(*args)
