"""The asset graph API: entities by type, one entity with its latest values, upstream and downstream walks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lineguard.health import Health
from lineguard.plant import default_plant_path, load_plant
from services.normalizer.api import AssetGraphApi
from services.normalizer.mapping import Normalizer
from services.normalizer.service import build_app

T0 = 1_764_400_000_000
OVEN = "urn:ngsi-ld:Machine:line1-oven"
MIXER = "urn:ngsi-ld:Machine:line1-mixer"
DETECTOR = "urn:ngsi-ld:Machine:line1-detector"
TOKEN = "unit-test-token"


@pytest.fixture(scope="module")
def normalizer() -> Normalizer:
    normalizer = Normalizer(load_plant(default_plant_path()))
    normalizer.observation({"id": "r1", "device": "line1-oven", "metric": "zone1_temperature", "value": 365.0,
                            "unit": "degF", "observed_at": T0, "received_at": T0,
                            "source": {"protocol": "sparkplug", "device": "line1-oven", "address": "x",
                                       "position": None, "received_by": None}, "attributes": {}})
    return normalizer


def call(normalizer: Normalizer, method: str, path: str, accept: str = "application/ld+json") -> tuple[int, Any, dict]:
    async def run() -> tuple[int, Any, dict]:
        health = Health("normalizer-test")
        async with TestClient(TestServer(build_app(health, AssetGraphApi(normalizer, token=TOKEN)))) as client:
            response = await getattr(client, method)(path, headers={"Authorization": f"Bearer {TOKEN}",
                                                                    "Accept": accept})
            body = await response.json(content_type=None)
            return response.status, body, dict(response.headers)

    return asyncio.run(run())


def test_entities_by_type_lists_every_machine_as_json_ld(normalizer: Normalizer) -> None:
    status, body, headers = call(normalizer, "get", "/ngsi-ld/v1/entities?type=Machine&count=true")
    assert status == 200
    assert headers["Content-Type"].startswith("application/ld+json")
    ids = [e["id"] for e in body]
    assert MIXER in ids and OVEN in ids and DETECTOR in ids
    assert all(e["type"] == "Machine" and "@context" in e for e in body)
    assert headers["NGSILD-Results-Count"] == str(len(ids)) == "7"


def test_one_entity_has_relationships_and_the_latest_value(normalizer: Normalizer) -> None:
    status, oven, _ = call(normalizer, "get", f"/ngsi-ld/v1/entities/{OVEN}")
    assert status == 200
    assert oven["feeds"] == {"type": "Relationship", "object": "urn:ngsi-ld:Machine:line1-cooling-conveyor"}
    assert oven["partOf"]["object"] == "urn:ngsi-ld:Line:line1"
    assert oven["zone1_temperature"]["value"] == pytest.approx(185.0)
    assert oven["zone1_temperature"]["unitCode"] == "CEL"
    assert oven["zone1_temperature"]["observedAt"] == "2025-11-29T07:06:40.000Z"


def test_key_values_option_gives_the_simplified_form(normalizer: Normalizer) -> None:
    _, oven, _ = call(normalizer, "get", f"/ngsi-ld/v1/entities/{OVEN}?options=keyValues")
    assert oven["feeds"] == "urn:ngsi-ld:Machine:line1-cooling-conveyor"
    assert oven["zone1_temperature"] == pytest.approx(185.0)


def test_the_detectors_upstream_includes_the_oven_and_the_mixer(normalizer: Normalizer) -> None:
    status, body, _ = call(normalizer, "get", f"/ngsi-ld/v1/entities/{DETECTOR}/upstream")
    assert status == 200
    ids = [e["id"] for e in body["entities"]]
    assert ids[0] == "urn:ngsi-ld:Machine:line1-cooling-conveyor"  # nearest first
    assert OVEN in ids and MIXER in ids
    assert ids.index(OVEN) < ids.index(MIXER)
    assert "urn:ngsi-ld:Machine:line1-packaging" not in ids


def test_the_mixers_downstream_reaches_packaging(normalizer: Normalizer) -> None:
    _, body, _ = call(normalizer, "get", f"/ngsi-ld/v1/entities/{MIXER}/downstream")
    ids = [e["id"] for e in body["entities"]]
    assert ids[:2] == ["urn:ngsi-ld:Machine:line1-depositor", OVEN]
    assert ids[-1] == "urn:ngsi-ld:Machine:line1-packaging"


def test_a_sensor_walks_from_its_machine(normalizer: Normalizer) -> None:
    _, body, _ = call(normalizer, "get",
                      "/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:line1-detector-items_per_minute/upstream")
    assert body["from"] == DETECTOR and OVEN in [e["id"] for e in body["entities"]]


def test_unknown_entity_is_a_problem_details_404(normalizer: Normalizer) -> None:
    status, body, _ = call(normalizer, "get", "/ngsi-ld/v1/entities/urn:ngsi-ld:Machine:line1-toaster")
    assert status == 404 and body["type"].endswith("/ResourceNotFound") and "line1-toaster" in body["detail"]
    status, body, _ = call(normalizer, "get", "/ngsi-ld/v1/entities/urn:ngsi-ld:Machine:nope/upstream")
    assert status == 404


def test_bad_queries_are_400s(normalizer: Normalizer) -> None:
    assert call(normalizer, "get", "/ngsi-ld/v1/entities")[0] == 400
    assert call(normalizer, "get", "/ngsi-ld/v1/entities?type=Machine&limit=x")[0] == 400
    status, body, _ = call(normalizer, "get", "/ngsi-ld/v1/entities/urn:ngsi-ld:Line:line1/upstream")
    assert status == 400 and "not a machine or sensor" in body["detail"]


def test_the_whole_graph_and_health_share_the_app(normalizer: Normalizer) -> None:
    status, body, _ = call(normalizer, "get", "/ngsi-ld/v1/graph")
    assert status == 200 and body["@context"].startswith("https://uri.etsi.org/ngsi-ld/")
    types = {e["type"] for e in body["@graph"]}
    assert {"Site", "Line", "Machine", "Sensor", "Controller"} <= types
    assert call(normalizer, "get", "/livez")[0] == 200
