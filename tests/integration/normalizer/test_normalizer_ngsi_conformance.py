"""NGSI-LD conformance (ETSI GS CIM 009, read side) against the running service (`python -m services.normalizer`):
content negotiation and the Link header, 406, the query language (q) and its 400s, attrs/pick/omit, idPattern,
options=keyValues|concise, count, /types and /attributes, ProblemDetails on every route (unknown routes and methods
too), 400 for a non-URI id, bearer auth with health and /metrics open, and the temporal API answered from the lake
the service wrote (a local directory here, S3 on moto server below) plus the observations it holds in memory.

History set-up: 100 oven zone 1 readings (one every 30 s from 07:00:00Z, 170 and 190 C alternately, so every
minute averages 180) are handled by a first run, which stops with SIGTERM (everything flushed to the lake and
committed). A second run gets 20 more (07:50 to 08:00); with LINEGUARD_LAKE_MAX_ROWS=50 they stay in its open
segment, in memory only. A temporal query over 07:00 to 08:00 must see all 120: 100 from the lake, 20 from memory.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
from normalizer_process import API_TOKEN, NormalizerProcess, normalizer_env
from polling import wait_for

from lineguard.catalog import admin_client, bootstrap_topics, load_catalog
from lineguard.kafka import Producer
from lineguard.settings import Settings

pytestmark = pytest.mark.integration

T0 = 1_764_399_600_000  # 2025-11-29T07:00:00Z
STEP = 30_000
OVEN = "urn:ngsi-ld:Machine:line1-oven"
MIXER = "urn:ngsi-ld:Machine:line1-mixer"
CONVEYOR = "urn:ngsi-ld:Machine:line1-cooling-conveyor"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
LD = {"Accept": "application/ld+json"}
TEMPORAL = f"/ngsi-ld/v1/temporal/entities/{OVEN}"
HOUR = "timerel=between&timeAt=2025-11-29T07:00:00Z&endTimeAt=2025-11-29T08:00:00Z"


def reading(i: int, device: str = "line1-oven", metric: str = "zone1_temperature", value: Any = None,
            unit: str | None = "CEL") -> dict:
    at = T0 + i * STEP
    return {"id": f"{device}-{metric}-{i}", "device": device, "metric": metric,
            "value": (170.0 if i % 2 == 0 else 190.0) if value is None else value, "unit": unit,
            "observed_at": at, "received_at": at + 20,
            "source": {"protocol": "mqtt", "device": device, "address": "t", "position": str(i), "received_by": None},
            "attributes": {}}


def produce(settings: Settings, records: list[dict]) -> None:
    producer = Producer(settings)
    for record in records:
        producer.produce("raw.telemetry.v1", record["device"], record)
    assert producer.close(20) == 0


def build_history(settings: Settings, service: NormalizerProcess) -> None:
    """First run: 100 oven readings, SIGTERM (all in the lake). Second run: 20 more plus a few latest values."""
    produce(settings, [reading(i) for i in range(100)])
    service.start()
    service.wait_ready()
    assert wait_for(lambda: service.records_in() >= 100, timeout=40), service.tail()
    assert service.stop() == 0, service.tail()
    service.start()
    service.wait_ready()
    produce(settings, [reading(i) for i in range(100, 120)] + [
        reading(119, "line1-mixer", "speed", 70.0, "RPM"), reading(119, "line1-mixer", "torque", 30.0, "NU"),
        reading(119, "line1-cooling-conveyor", "state", "stopped", None)])
    assert wait_for(lambda: service.records_in() >= 23, timeout=40), service.tail()


def lake_rows_local(root: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (root / "observations").rglob("*.parquet"))


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NormalizerProcess]:
    settings = Settings.from_env(environ={}, kafka_bootstrap=kafka_bootstrap, service_name="test",
                                 topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    bootstrap_topics(admin_client(settings.kafka_bootstrap), load_catalog(), settings.topic_prefix)
    tmp = tmp_path_factory.mktemp("ngsi")
    env = normalizer_env(settings, LINEGUARD_LAKE_DIR=str(tmp / "lake"), LINEGUARD_GROUP_ID="normalizer-ngsi",
                         LINEGUARD_LAKE_MAX_ROWS="50", LINEGUARD_LAKE_ROTATE_INTERVAL_S="86400")
    process = NormalizerProcess(env, tmp / "normalizer.log")
    try:
        build_history(settings, process)
        assert lake_rows_local(tmp / "lake") == 100  # the last 20 are in memory only
        yield process
        assert process.stop() == 0, process.tail()
    finally:
        process.ensure_stopped()


# --- authentication, health apart ------------------------------------------------------------------------------


def test_the_api_needs_the_bearer_token_and_health_and_metrics_do_not(service: NormalizerProcess) -> None:
    for token in (None, "wrong"):
        status, headers, body = service.request("/ngsi-ld/v1/entities?type=Machine", token=token)
        assert status == 401 and headers["Content-Type"].startswith("application/problem+json")
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = service.request("/ngsi-ld/v1/entities?type=Machine",
                                   headers={"Authorization": f"Basic {API_TOKEN}"}, token=None)
    assert status == 401
    for path in ("/livez", "/readyz", "/metrics"):
        assert service.request(path, token=None)[0] == 200, path


# --- content negotiation ------------------------------------------------------------------------------------------


def test_json_ld_carries_the_context_in_the_body(service: NormalizerProcess) -> None:
    status, headers, body = service.get_json(f"/ngsi-ld/v1/entities/{OVEN}", LD)
    assert status == 200 and headers["Content-Type"].startswith("application/ld+json")
    assert body["@context"] == CORE and "Link" not in headers
    _, _, listed = service.get_json("/ngsi-ld/v1/entities?type=Machine", LD)
    assert listed and all(e["@context"] == CORE for e in listed)


@pytest.mark.parametrize("accept", ["application/json", "*/*", None, "text/html;q=0.9, application/json;q=0.5"])
def test_json_has_no_context_in_the_body_and_a_link_header(service: NormalizerProcess, accept: str | None) -> None:
    status, headers, body = service.get_json(f"/ngsi-ld/v1/entities/{OVEN}", {"Accept": accept} if accept else {})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert "@context" not in body
    assert headers["Link"] == f'<{CORE}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "application/geo+json",
                                    "application/json;q=0"])
def test_an_unsupported_accept_is_406(service: NormalizerProcess, accept: str) -> None:
    status, headers, body = service.get_json(f"/ngsi-ld/v1/entities/{OVEN}", {"Accept": accept})
    assert status == 406 and headers["Content-Type"].startswith("application/problem+json")
    assert body["status"] == 406 and "application/ld+json" in body["detail"]


def test_a_request_link_context_is_accepted_and_a_malformed_one_is_400(service: NormalizerProcess) -> None:
    link = f'<{CORE}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    assert service.get_json("/ngsi-ld/v1/entities?type=Machine", {"Link": link})[0] == 200
    status, _, body = service.get_json("/ngsi-ld/v1/entities?type=Machine", {"Link": "not a link"})
    assert status == 400 and body["type"].endswith("/BadRequestData")


# --- entities: query language and projections ---------------------------------------------------------------------


def ids(service: NormalizerProcess, query: str) -> list[str]:
    status, _, body = service.get_json(f"/ngsi-ld/v1/entities?{query}")
    assert status == 200, body
    return [e["id"] for e in body]


def test_q_filters_on_latest_values_relationships_and_paths(service: NormalizerProcess) -> None:
    assert ids(service, "type=Machine&q=zone1_temperature>180") == [OVEN]  # the latest oven reading is 190
    assert ids(service, "type=Machine&q=zone1_temperature<180") == []
    assert ids(service, 'type=Machine&q=state=="stopped"') == [CONVEYOR]
    assert set(ids(service, 'q=state=="stopped"|speed>=70')) == {CONVEYOR, MIXER}
    assert ids(service, "q=speed>=70;torque<35") == [MIXER]
    assert ids(service, "q=speed>=70;torque>35") == []
    assert ids(service, "q=zone1_temperature.observedAt>=2025-11-29T07:59:00Z") == [OVEN]
    assert ids(service, 'q=zone1_temperature.unitCode=="CEL"') == [OVEN]
    assert OVEN in ids(service, "type=Machine&q=feeds==urn:ngsi-ld:Machine:line1-cooling-conveyor")
    assert ids(service, "type=Machine&q=zone1_temperature==185..195") == [OVEN]


@pytest.mark.parametrize("q", ["zone1_temperature>", "state==stopped", "(speed>1", "speed>1;", "a b"])
def test_bad_q_syntax_is_400_problem_details(service: NormalizerProcess, q: str) -> None:
    status, headers, body = service.get_json(f"/ngsi-ld/v1/entities?type=Machine&q={q.replace(' ', '%20')}")
    assert status == 400 and headers["Content-Type"].startswith("application/problem+json")
    assert body["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData" and "q" in body["detail"]


def test_id_pattern_attrs_pick_and_omit(service: NormalizerProcess) -> None:
    assert ids(service, "idPattern=urn:ngsi-ld:Machine:line1-(oven|mixer)") == [MIXER, OVEN]
    assert ids(service, "attrs=zone1_temperature") == [OVEN]
    _, _, [oven] = service.get_json("/ngsi-ld/v1/entities?id=" + OVEN + "&attrs=zone1_temperature,partOf")
    assert set(oven) == {"id", "type", "zone1_temperature", "partOf"}
    _, _, oven = service.get_json(f"/ngsi-ld/v1/entities/{OVEN}?pick=id,zone1_temperature")
    assert set(oven) == {"id", "zone1_temperature"}
    _, _, oven = service.get_json(f"/ngsi-ld/v1/entities/{OVEN}?omit=feeds,partOf")
    assert "feeds" not in oven and "partOf" not in oven and "zone1_temperature" in oven
    status, _, _ = service.get_json(f"/ngsi-ld/v1/entities/{OVEN}?pick=id&omit=type")
    assert status == 400
    assert service.get_json("/ngsi-ld/v1/entities?idPattern=(")[0] == 400


def test_key_values_concise_and_count(service: NormalizerProcess) -> None:
    _, _, oven = service.get_json(f"/ngsi-ld/v1/entities/{OVEN}?options=keyValues")
    assert oven["zone1_temperature"] == 190.0 and oven["partOf"] == "urn:ngsi-ld:Line:line1"
    _, _, oven = service.get_json(f"/ngsi-ld/v1/entities/{OVEN}?options=concise")
    assert oven["zone1_temperature"]["value"] == 190.0 and "type" not in oven["zone1_temperature"]
    assert oven["partOf"] == {"object": "urn:ngsi-ld:Line:line1"}
    assert oven["name"] == "Tunnel oven"  # a Property with only a value is that value
    status, headers, body = service.get_json("/ngsi-ld/v1/entities?type=Machine&count=true&limit=2")
    assert status == 200 and len(body) == 2 and headers["NGSILD-Results-Count"] == "7"
    assert "NGSILD-Results-Count" not in service.get_json("/ngsi-ld/v1/entities?type=Machine")[1]
    assert service.get_json(f"/ngsi-ld/v1/entities/{OVEN}?options=keyValues,concise")[0] == 400
    assert service.get_json(f"/ngsi-ld/v1/entities/{OVEN}?options=bogus")[0] == 400


def test_expanded_type_and_attribute_names_match(service: NormalizerProcess) -> None:
    default = "https://uri.etsi.org/ngsi-ld/default-context/"
    assert len(ids(service, f"type={default}Machine")) == 7
    assert len(ids(service, "type=Machine|Line")) == 8 == len(ids(service, "type=Machine,Line"))
    assert ids(service, f"attrs={default}zone1_temperature") == [OVEN]


# --- types and attributes ---------------------------------------------------------------------------------------


def test_types_and_attributes(service: NormalizerProcess) -> None:
    _, _, types = service.get_json("/ngsi-ld/v1/types")
    assert types["type"] == "EntityTypeList" and {"Machine", "Line", "Sensor"} <= set(types["typeList"])
    _, _, details = service.get_json("/ngsi-ld/v1/types?details=true")
    machine = next(t for t in details if t["typeName"] == "Machine")
    assert machine["type"] == "EntityType" and "zone1_temperature" in machine["attributeNames"]
    _, _, info = service.get_json("/ngsi-ld/v1/types/Machine")
    assert info["type"] == "EntityTypeInfo" and info["entityCount"] == 7
    assert {"attributeName": "partOf", "attributeTypes": ["Relationship"]}.items() <= next(
        a for a in info["attributeDetails"] if a["attributeName"] == "partOf").items()
    _, _, attrs = service.get_json("/ngsi-ld/v1/attributes")
    assert attrs["type"] == "AttributeList" and "zone1_temperature" in attrs["attributeList"]
    _, _, attr = service.get_json("/ngsi-ld/v1/attributes/zone1_temperature")
    assert attr["typeNames"] == ["Machine"] and attr["attributeCount"] == 1
    _, _, listed = service.get_json("/ngsi-ld/v1/attributes?details=true")
    assert any(a["attributeName"] == "feeds" for a in listed)
    assert service.get_json("/ngsi-ld/v1/types/Toaster")[0] == 404
    assert service.get_json("/ngsi-ld/v1/attributes/nothing")[0] == 404


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "status", "kind"), [
    ("GET", "/ngsi-ld/v1/entities/urn:ngsi-ld:Machine:line1-toaster", 404, "ResourceNotFound"),
    ("GET", "/ngsi-ld/v1/entities/not-a-uri", 400, "BadRequestData"),
    ("GET", "/ngsi-ld/v1/entities?id=not-a-uri", 400, "BadRequestData"),
    ("GET", "/ngsi-ld/v1/entities", 400, "BadRequestData"),
    ("GET", "/ngsi-ld/v1/nothing-here", 404, "ResourceNotFound"),
    ("GET", "/no-such-route", 404, "ResourceNotFound"),
    ("POST", "/ngsi-ld/v1/entities", 405, "OperationNotSupported"),
    ("DELETE", f"/ngsi-ld/v1/entities/{OVEN}", 405, "OperationNotSupported"),
    ("GET", f"{TEMPORAL}?timerel=whenever&timeAt=2025-11-29T07:00:00Z", 400, "BadRequestData"),
])
def test_every_error_is_problem_details(service: NormalizerProcess, method: str, path: str, status: int,
                                        kind: str) -> None:
    got, headers, body = service.request(path, method=method)
    assert got == status, body
    assert headers["Content-Type"].startswith("application/problem+json")
    problem = __import__("json").loads(body)
    assert problem["type"] == f"https://uri.etsi.org/ngsi-ld/errors/{kind}" and problem["status"] == status
    assert problem["title"] and problem["detail"]


# --- temporal ---------------------------------------------------------------------------------------------------


def check_temporal(service: NormalizerProcess) -> None:
    """The temporal API over a lake the service wrote (100 readings) plus its memory (20 readings)."""
    status, _, body = service.get_json(f"{TEMPORAL}?attrs=zone1_temperature&{HOUR}", LD)
    assert status == 200, body
    assert body["id"] == OVEN and body["@context"] == CORE
    instances = body["zone1_temperature"]
    assert len(instances) == 120, f"expected 100 from the lake and 20 from memory, got {len(instances)}"
    assert [i["observedAt"] for i in instances][:2] == ["2025-11-29T07:00:00.000Z", "2025-11-29T07:00:30.000Z"]
    assert instances[-1]["observedAt"] == "2025-11-29T07:59:30.000Z"
    assert [i["value"] for i in instances[:4]] == [170.0, 190.0, 170.0, 190.0]
    assert all(i["type"] == "Property" and i["unitCode"] == "CEL" for i in instances)
    assert len({i["instanceId"] for i in instances}) == 120

    status, _, body = service.get_json(
        f"{TEMPORAL}?attrs=zone1_temperature&{HOUR}&aggrMethods=avg,min,max&aggrPeriodDuration=PT10M"
        "&options=aggregatedValues")
    assert status == 200, body
    aggregated = body["zone1_temperature"]
    assert [v for v, _, _ in aggregated["avg"]] == [180.0] * 6
    assert [v for v, _, _ in aggregated["min"]] == [170.0] * 6 and [v for v, _, _ in aggregated["max"]] == [190.0] * 6
    assert aggregated["avg"][0][1:] == ["2025-11-29T07:00:00.000Z", "2025-11-29T07:10:00.000Z"]
    assert aggregated["avg"][5][1:] == ["2025-11-29T07:50:00.000Z", "2025-11-29T08:00:00.000Z"]

    _, _, body = service.get_json(f"{TEMPORAL}?attrs=zone1_temperature&{HOUR}&aggrMethods=totalCount,sum")
    assert body["zone1_temperature"]["totalCount"][0][0] == 120
    assert body["zone1_temperature"]["sum"][0][0] == 120 * 180.0

    _, _, body = service.get_json(f"{TEMPORAL}?attrs=zone1_temperature&{HOUR}&lastN=3&options=temporalValues")
    assert body["zone1_temperature"]["values"] == [[190.0, "2025-11-29T07:58:30.000Z"],
                                                   [170.0, "2025-11-29T07:59:00.000Z"],
                                                   [190.0, "2025-11-29T07:59:30.000Z"]]
    _, _, body = service.get_json(
        f"{TEMPORAL}?attrs=zone1_temperature&timerel=before&timeAt=2025-11-29T07:01:00Z")
    assert len(body["zone1_temperature"]) == 2
    _, _, body = service.get_json(
        f"{TEMPORAL}?attrs=zone1_temperature&timerel=after&timeAt=2025-11-29T07:58:00Z")
    assert len(body["zone1_temperature"]) == 3
    _, _, body = service.get_json(f"/ngsi-ld/v1/temporal/entities?type=Machine&attrs=speed&{HOUR}")
    assert {e["id"] for e in body if "speed" in e} == {MIXER}
    for bad in ("timerel=between&timeAt=2025-11-29T07:00:00Z", "timeAt=2025-11-29T07:00:00Z",
                f"{HOUR}&aggrMethods=median", f"{HOUR}&aggrMethods=avg&aggrPeriodDuration=P1M",
                f"{HOUR}&lastN=0", "timerel=before&timeAt=yesterday"):
        status, headers, body = service.get_json(f"{TEMPORAL}?{bad}")
        assert status == 400 and body["type"].endswith("/BadRequestData"), (bad, body)


def test_temporal_api_over_the_local_lake_and_memory(service: NormalizerProcess) -> None:
    check_temporal(service)


def test_temporal_api_over_an_s3_lake_and_memory(make_settings: Callable[..., Settings],
                                                  create_topics: Callable[[Settings], None], tmp_path: Path,
                                                  moto_endpoint: str) -> None:
    settings = make_settings()
    create_topics(settings)
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="lake")
    env = normalizer_env(settings, LINEGUARD_LAKE_URL="s3://lake/lineguard", LINEGUARD_LAKE_ENDPOINT_URL=moto_endpoint,
                         LINEGUARD_GROUP_ID="normalizer-ngsi-s3", LINEGUARD_LAKE_MAX_ROWS="50",
                         LINEGUARD_LAKE_ROTATE_INTERVAL_S="86400", **aws)
    service = NormalizerProcess(env, tmp_path / "normalizer.log")
    try:
        build_history(settings, service)
        rows = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix="lineguard/observations/"):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket="lake", Key=obj["Key"])["Body"].read()
                rows += pq.read_metadata(io.BytesIO(body)).num_rows
        assert rows == 100  # the last 20 are in memory only
        check_temporal(service)
        assert service.stop() == 0, service.tail()
    finally:
        service.ensure_stopped()
