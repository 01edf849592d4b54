"""The intake: each accepted image yields one inspection; each kind of bad input gets its own 4xx."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from lineguard.avro import AvroSerde
from lineguard.health import Health, create_app
from services.vision.detector import LocalDetector
from services.vision.inspections import MemoryInspectionSink, inspection_id
from services.vision.service import VisionService
from services.vision.store import LocalObjectStore
from simulator.camera import render_cookie

TOKEN = "camera-1-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
META = {"line_id": "line1", "station": "line1-detector", "item_id": "item-0001",
        "captured_at": "2026-11-29T12:00:00Z"}


@pytest.fixture(scope="module")
def detector() -> LocalDetector:
    return LocalDetector()


@pytest.fixture(scope="module")
def cookie_png() -> bytes:
    return render_cookie(frozenset({"burnt"}), np.random.default_rng(11))[0]


Scenario = Callable[[TestClient, VisionService], Awaitable[None]]


def run(detector, tmp_path: Path, scenario: Scenario, **options) -> MemoryInspectionSink:
    """Start the service on a real aiohttp test server, run the scenario against it, return what it published."""
    sink = MemoryInspectionSink()

    async def main() -> None:
        options.setdefault("tokens", ("camera-0-token", TOKEN))
        service = VisionService(detector, LocalObjectStore(tmp_path / "images"), sink, **options)
        app = create_app(Health("vision"))
        service.add_routes(app)
        async with TestClient(TestServer(app), headers=AUTH) as client:
            await scenario(client, service)
        await service.close()

    asyncio.run(main())
    return sink


def form(meta: dict, image: bytes | None, filename: str = "x.png") -> aiohttp.FormData:
    data = aiohttp.FormData()
    for key, value in meta.items():
        data.add_field(key, value)
    if image is not None:
        data.add_field("image", image, filename=filename, content_type="image/png")
    return data


def test_multipart_upload_yields_one_inspection_with_the_uri_not_the_pixels(detector, tmp_path, cookie_png):
    async def scenario(client, service):
        response = await client.post("/v1/images", data=form(META, cookie_png))
        assert response.status == 200, await response.text()
        body = await response.json()
        assert body["verdict"] == "defective"
        assert [d["defect_class"] for d in body["defects"]] == ["burnt"]

    sink = run(detector, tmp_path, scenario)
    assert len(sink.inspections) == 1
    inspection = sink.inspections[0]
    assert inspection["id"] == inspection_id("line1", "line1-detector", "item-0001")
    assert inspection["captured_at"] == 1795953600000
    assert inspection["image_uri"].startswith("file://")
    stored = Path(unquote(urlparse(inspection["image_uri"]).path))
    assert stored.read_bytes() == cookie_png and stored.is_relative_to(tmp_path)
    assert "png" not in {k for k in inspection if isinstance(inspection[k], bytes)}
    # the record is exactly what raw.inspections.v1 takes
    serde = AvroSerde()
    assert serde.decode("raw.inspections.v1", serde.encode("raw.inspections.v1", inspection)) == inspection


def test_json_upload_and_claim_check(detector, tmp_path, cookie_png):
    async def scenario(client, service):
        body = {**META, "image_base64": base64.b64encode(cookie_png).decode()}
        first = await client.post("/v1/images", json=body)
        assert first.status == 200, await first.text()
        uri = (await first.json())["image_uri"]
        again = await client.post("/v1/images", json={**META, "item_id": "item-0002", "image_uri": uri})
        assert again.status == 200, await again.text()
        assert (await again.json())["image_uri"] == uri

    sink = run(detector, tmp_path, scenario)
    assert [i["item_id"] for i in sink.inspections] == ["item-0001", "item-0002"]
    assert sink.inspections[0]["defects"] == sink.inspections[1]["defects"]


def test_batch_answers_each_image_and_publishes_only_the_good_ones(detector, tmp_path, cookie_png):
    async def scenario(client, service):
        items = [{**META, "item_id": f"b{i}", "image_base64": base64.b64encode(cookie_png).decode()}
                 for i in range(3)]
        items.append({**META, "item_id": "bad", "image_base64": base64.b64encode(b"not an image").decode()})
        response = await client.post("/v1/images/batch", json={"items": items})
        assert response.status == 207
        results = (await response.json())["results"]
        assert [r["status"] for r in results] == [200, 200, 200, 415]
        assert "not an image" in results[3]["error"]

    sink = run(detector, tmp_path, scenario)
    assert sorted(i["item_id"] for i in sink.inspections) == ["b0", "b1", "b2"]


def truncated(png: bytes) -> bytes:
    return png[: len(png) // 2]


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (80, 90, 100)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("not_an_image", 415, "not an image"),
        ("truncated", 422, "truncated or corrupt"),
        ("wrong_size", 422, "this station expects 256x256"),
        ("too_large", 413, "larger than the limit"),
        ("missing_metadata", 400, "missing metadata: item_id, captured_at"),
        ("no_timezone", 400, "has no timezone"),
        ("no_image", 400, "no image"),
        ("bad_base64", 400, "not valid base64"),
        ("not_json", 400, "not valid JSON"),
        ("wrong_content_type", 415, "Content-Type text/plain"),
        ("foreign_reference", 400, "outside the image store"),
        ("missing_reference", 422, "does not exist"),
        ("empty_batch", 400, "at least one image"),
        ("batch_too_big", 413, "the limit is 4"),
        ("too_many_pixels", 413, "the limit is 40000"),
    ],
)
def test_bad_input_gets_the_right_4xx_and_publishes_nothing(detector, tmp_path, cookie_png, case, status, message):
    async def scenario(client, service):
        post = client.post
        b64 = base64.b64encode(cookie_png).decode()
        requests = {
            "not_an_image": lambda: post("/v1/images", data=form(META, b"GIF? no, just text")),
            "truncated": lambda: post("/v1/images", data=form(META, truncated(cookie_png))),
            "wrong_size": lambda: post("/v1/images", data=form(META, small_png())),
            "too_large": lambda: post("/v1/images", data=form(META, cookie_png + b"\0" * 300_000)),
            "missing_metadata": lambda: post("/v1/images", data=form(
                {"line_id": "line1", "station": "s"}, cookie_png)),
            "no_timezone": lambda: post("/v1/images", data=form({**META, "captured_at": "2026-11-29T12:00:00"},
                                                                 cookie_png)),
            "no_image": lambda: post("/v1/images", data=form(META, None)),
            "bad_base64": lambda: post("/v1/images", json={**META, "image_base64": "%%%not base64%%%"}),
            "not_json": lambda: post("/v1/images", data=b"{nope", headers={"Content-Type": "application/json"}),
            "wrong_content_type": lambda: post("/v1/images", data=b"hello", headers={"Content-Type": "text/plain"}),
            "foreign_reference": lambda: post("/v1/images", json={**META, "image_uri": "file:///etc/passwd"}),
            "missing_reference": lambda: post("/v1/images", json={
                **META, "image_uri": (tmp_path / "images" / "nothing.png").as_uri()}),
            "empty_batch": lambda: post("/v1/images/batch", json={"items": []}),
            "batch_too_big": lambda: post("/v1/images/batch", json={"items": [
                {**META, "image_base64": b64}] * 5}),
            "too_many_pixels": lambda: post("/v1/images", data=form(META, cookie_png)),
        }
        response = await requests[case]()
        assert response.status == status, await response.text()
        assert message in (await response.json())["error"]

    expected = (256, 256) if case == "wrong_size" else None
    pixels = 200 * 200 if case == "too_many_pixels" else 4096 * 4096
    sink = run(detector, tmp_path, scenario, max_image_bytes=300_000, max_batch=4, expected_size=expected,
               max_pixels=pixels)
    assert sink.inspections == []
    assert not list((tmp_path / "images").rglob("*.*")), "a refused image is not kept"


def belt_only_png() -> bytes:
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal([78, 90, 106], 3, size=(256, 256, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_failing_sink_is_a_503_not_a_crash(detector, tmp_path, cookie_png):
    class BrokenSink(MemoryInspectionSink):
        async def publish(self, inspection):
            raise RuntimeError("broker unreachable")

    async def main() -> None:
        service = VisionService(detector, LocalObjectStore(tmp_path), BrokenSink(), tokens=(TOKEN,))
        app = web.Application()
        service.add_routes(app)
        async with TestClient(TestServer(app), headers=AUTH) as client:
            response = await client.post("/v1/images", data=form(META, cookie_png))
            assert response.status == 503
            assert "broker unreachable" in (await response.json())["error"]
            ok = await client.get("/v1/detector")
            assert (await ok.json())["model"]["provider"] == "local"
        await service.close()

    asyncio.run(main())


def test_metrics_count_images_and_verdicts(detector, tmp_path, cookie_png):
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (value("lineguard_vision_images_total", outcome="inspected"),
              value("lineguard_vision_verdicts_total", verdict="defective"),
              value("lineguard_vision_defects_total", defect_class="burnt"),
              value("lineguard_vision_images_rejected_total", reason="not_an_image"))

    async def scenario(client, service):
        assert (await client.post("/v1/images", data=form(META, cookie_png))).status == 200
        assert (await client.post("/v1/images", data=form(META, b"junk"))).status == 415
        text = await (await client.get("/metrics")).text()
        assert "lineguard_vision_detect_duration_seconds_bucket" in text

    run(detector, tmp_path, scenario)
    after = (value("lineguard_vision_images_total", outcome="inspected"),
             value("lineguard_vision_verdicts_total", verdict="defective"),
             value("lineguard_vision_defects_total", defect_class="burnt"),
             value("lineguard_vision_images_rejected_total", reason="not_an_image"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]


def metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_abstention_is_answered_counted_kept_and_published_as_not_judged(detector, tmp_path):
    from services.vision.inspections import TOPIC

    before = (metric("lineguard_vision_abstentions_total", reason="no_cookie"),
              metric("lineguard_vision_images_total", outcome="abstained"),
              metric("lineguard_vision_verdicts_total", verdict="abstained"))

    async def scenario(client, service):
        response = await client.post("/v1/images", data=form(META, belt_only_png()))
        assert response.status == 200
        body = await response.json()
        assert body["verdict"] == "abstained" and body["reason"] == "no_cookie"
        assert body["abstention"]["reason"] == "no_cookie" and "no cookie" in body["abstention"]["message"]
        assert "no cookie" in body["message"]
        assert Path(unquote(urlparse(body["image_uri"]).path)).exists()  # kept for labelling

    sink = run(detector, tmp_path, scenario)
    [published] = sink.inspections
    assert published["verdict"] == "abstained" and published["defects"] == []
    assert published["abstention"]["reason"] == "no_cookie"
    serde = AvroSerde()  # the record is valid raw.inspections.v1 and keeps its abstention through the wire
    assert serde.decode(TOPIC, serde.encode(TOPIC, published))["abstention"] == published["abstention"]
    after = (metric("lineguard_vision_abstentions_total", reason="no_cookie"),
             metric("lineguard_vision_images_total", outcome="abstained"),
             metric("lineguard_vision_verdicts_total", verdict="abstained"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def bedrock_client():
    import boto3

    return boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def tool_answer(answer: dict) -> dict:
    from services.vision.bedrock import TOOL_NAME

    return {"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": TOOL_NAME, "input": answer}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
        "metrics": {"latencyMs": 1}}


def test_abstentions_go_to_bedrock_when_it_is_the_fallback(detector, tmp_path, cookie_png):
    from botocore.stub import Stubber

    from services.vision.bedrock import BedrockDetector

    client = bedrock_client()
    fallback = BedrockDetector("us.amazon.nova-lite-v1:0", client=client, sleep=lambda s: None)
    before = metric("lineguard_vision_fallbacks_total", outcome="judged")

    async def scenario(client_, service):
        # a judged image never reaches Bedrock (the stubber has one answer only, for the abstention)
        assert (await client_.post("/v1/images", data=form(META, cookie_png))).status == 200
        response = await client_.post("/v1/images", data=form({**META, "item_id": "b"}, belt_only_png()))
        body = await response.json()
        assert response.status == 200 and body["verdict"] == "ok" and body["model"]["provider"] == "bedrock"

    with Stubber(client) as stub:
        stub.add_response("converse", tool_answer({"verdict": "ok", "defects": []}))
        sink = run(detector, tmp_path, scenario, fallback=fallback)
        stub.assert_no_pending_responses()
    assert [i["model"]["provider"] for i in sink.inspections] == ["local", "bedrock"]
    assert metric("lineguard_vision_fallbacks_total", outcome="judged") - before == 1


@pytest.mark.parametrize(("code", "status"), [("ValidationException", 422), ("AccessDeniedException", 500)])
def test_an_image_bedrock_refuses_is_a_permanent_error_and_not_kept(tmp_path, cookie_png, code, status):
    from botocore.stub import Stubber

    from services.vision.bedrock import BedrockDetector

    client = bedrock_client()
    bedrock = BedrockDetector("us.amazon.nova-lite-v1:0", client=client, sleep=lambda s: None)

    async def scenario(client_, service):
        response = await client_.post("/v1/images", data=form(META, cookie_png))
        assert response.status == status
        assert code in (await response.json())["error"]

    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code=code, service_message="refused", http_status_code=400)
        sink = run(bedrock, tmp_path, scenario)
        stub.assert_no_pending_responses()  # asked once: not retried
    assert sink.inspections == []
    assert not list((tmp_path / "images").rglob("*.*"))


def test_a_4096_pixel_upload_is_reduced_before_detection(detector, tmp_path):
    small, truth = render_cookie(frozenset({"burnt"}), np.random.default_rng(11), size=512)
    big = Image.open(io.BytesIO(small)).resize((4096, 4096), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    seen: list[tuple[int, int]] = []
    original = detector.detect

    class Spy:
        model = detector.model

        def detect(self, image):
            seen.append(image.pixels.shape[:2])
            return original(image)

    async def scenario(client, service):
        response = await client.post("/v1/images", data=form(META, buffer.getvalue(), "big.jpg"))
        assert response.status == 200, await response.text()
        inspection = await response.json()
        assert [d["defect_class"] for d in inspection["defects"]] == ["burnt"]
        box = inspection["defects"][0]["box"]  # in the uploaded image's pixels
        true_box = [v * 8 for v in truth[0]["box"]]
        assert all(abs(a - b) < 160 for a, b in zip(box, true_box, strict=True)), (box, true_box)

    run(Spy(), tmp_path, scenario, max_image_bytes=8 * 1024 * 1024)
    assert seen and max(seen[0]) <= 512


def test_only_a_cameras_token_may_post_images_or_read_the_detector(detector, tmp_path, cookie_png):
    async def scenario(client, service):
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            for method, path, body in (("POST", "/v1/images", form(META, cookie_png)),
                                       ("POST", "/v1/images/batch", {"items": [META]}), ("GET", "/v1/detector", None)):
                kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
                response = await client.request(method, path, headers=headers, **kwargs)
                assert response.status == 401, (headers, path)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        # the first camera's token works as well as the second's (the client's default)
        other = {"Authorization": "Bearer camera-0-token"}
        assert (await client.post("/v1/images", data=form(META, cookie_png), headers=other)).status == 200

    sink = run(detector, tmp_path, scenario)
    assert len(sink.inspections) == 1


def test_without_tokens_the_intake_is_disabled(detector, tmp_path, cookie_png):
    async def scenario(client, service):
        response = await client.post("/v1/images", data=form(META, cookie_png))
        assert response.status == 503 and "LINEGUARD_VISION_TOKENS" in (await response.json())["error"]
        assert (await client.get("/readyz")).status in (200, 503)  # health stays open

    assert run(detector, tmp_path, scenario, tokens=()).inspections == []
