"""The bedrock detector against botocore's Stubber on a real bedrock-runtime client."""

from __future__ import annotations

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

from services.vision.bedrock import TOOL_NAME, BedrockDetector
from services.vision.detector import DetectionError, PermanentDetectionError
from services.vision.imaging import decode_image
from simulator.camera import render_cookie

MODEL_ID = "us.amazon.nova-lite-v1:0"


def tool_response(answer: dict, stop_reason: str = "tool_use", name: str = TOOL_NAME) -> dict:
    return {
        "output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": name, "input": answer}}]}},
        "stopReason": stop_reason,
        "usage": {"inputTokens": 900, "outputTokens": 60, "totalTokens": 960},
        "metrics": {"latencyMs": 800},
    }


@pytest.fixture()
def client():
    return boto3.client("bedrock-runtime", region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture()
def image():
    png, _ = render_cookie(frozenset({"cracked", "burnt"}), np.random.default_rng(3))
    return decode_image(png)


def expected_request(image) -> dict:
    return {
        "modelId": MODEL_ID,
        "system": ANY,
        "messages": [{"role": "user", "content": [
            {"image": {"format": "png", "source": {"bytes": image.data}}}, {"text": ANY}]}],
        "inferenceConfig": ANY,
        "toolConfig": {"tools": ANY, "toolChoice": {"tool": {"name": TOOL_NAME}}},
    }


def test_forced_tool_answer_is_parsed_into_defects(client, image):
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None)
    answer = {"verdict": "defective", "defects": [
        {"defect_class": "burnt", "confidence": 0.93, "box": [60, 58, 190, 200], "reason": "very dark dough"},
        {"defect_class": "cracked", "confidence": 0.71, "box": [100, 90, 140.4, 150], "reason": "dark line"},
    ]}
    with Stubber(client) as stub:
        stub.add_response("converse", tool_response(answer), expected_request(image))
        detection = detector.detect(image)
        stub.assert_no_pending_responses()
    assert detection.verdict == "defective"
    assert detection.classes == {"burnt", "cracked"}
    cracked = next(d for d in detection.defects if d.defect_class == "cracked")
    assert cracked.box == [100, 90, 140, 150] and cracked.confidence == 0.71 and cracked.reason == "dark line"
    assert detection.model.provider == "bedrock" and detection.model.model_id == MODEL_ID


def test_ok_answer_gives_ok_verdict(client, image):
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None)
    with Stubber(client) as stub:
        stub.add_response("converse", tool_response({"verdict": "ok", "defects": []}), expected_request(image))
        assert detector.detect(image).verdict == "ok"


def test_request_carries_the_image_block_and_the_forced_tool(image):
    request = BedrockDetector(MODEL_ID, client=object()).request(image)
    block = request["messages"][0]["content"][0]["image"]
    assert block == {"format": "png", "source": {"bytes": image.data}}
    assert request["toolConfig"]["toolChoice"] == {"tool": {"name": TOOL_NAME}}
    schema = request["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]
    assert set(schema["properties"]["defects"]["items"]["required"]) == {"defect_class", "confidence", "box",
                                                                         "reason"}
    assert BedrockDetector(MODEL_ID, client=object(), tool_choice="any").request(image)["toolConfig"][
        "toolChoice"] == {"any": {}}


def test_throttling_and_cold_start_are_retried_with_backoff(client, image):
    delays: list[float] = []
    detector = BedrockDetector(MODEL_ID, client=client, sleep=delays.append, base_delay_s=0.2)
    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        stub.add_client_error("converse", service_error_code="ModelNotReadyException", http_status_code=429)
        stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        stub.add_response("converse", tool_response({"verdict": "ok", "defects": []}))
        assert detector.detect(image).verdict == "ok"
        stub.assert_no_pending_responses()
    assert detector.retries == 3 and len(delays) == 3
    # exponential: each delay's ceiling doubles (0.2, 0.4, 0.8), jitter keeps it in [ceiling / 2, ceiling]
    for delay, ceiling in zip(delays, (0.2, 0.4, 0.8), strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_retries_give_up_after_max_attempts(client, image):
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None, max_attempts=2)
    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        with pytest.raises(ClientError, match="ThrottlingException"):
            detector.detect(image)


@pytest.mark.parametrize(("code", "http", "status"), [("ValidationException", 400, 422),
                                                      ("AccessDeniedException", 403, 500),
                                                      ("ResourceNotFoundException", 404, 500)])
def test_refusals_are_permanent_not_retried(client, image, code, http, status):
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None)
    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code=code, service_message="no", http_status_code=http)
        with pytest.raises(PermanentDetectionError, match=code) as caught:
            detector.detect(image)
        stub.assert_no_pending_responses()
    assert detector.retries == 0 and caught.value.status == status


def test_a_reask_carries_the_validation_error(client, image):
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None)
    bad = tool_response({"verdict": "maybe", "defects": []})
    first = expected_request(image)
    second = {**first, "messages": [
        first["messages"][0],
        {"role": "assistant", "content": bad["output"]["message"]["content"]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "status": "error", "content": [
            {"text": ANY}]}}]},
    ]}
    seen: list[dict] = []
    client.meta.events.register("before-parameter-build.bedrock-runtime.Converse",
                                lambda params, **_: seen.append(params))
    with Stubber(client) as stub:
        stub.add_response("converse", bad, first)
        stub.add_response("converse", tool_response({"verdict": "ok", "defects": []}), second)
        assert detector.detect(image).verdict == "ok"
        stub.assert_no_pending_responses()
    correction = seen[1]["messages"][2]["content"][0]["toolResult"]["content"][0]["text"]
    assert "verdict must be 'ok' or 'defective', got 'maybe'" in correction
    assert seen[0]["messages"] != seen[1]["messages"]


def test_an_answer_without_the_tool_is_reasked_with_a_text_correction(client, image):
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None)
    text_only = {"output": {"message": {"role": "assistant", "content": [{"text": "looks fine"}]}},
                 "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
                 "metrics": {"latencyMs": 1}}
    seen: list[dict] = []
    client.meta.events.register("before-parameter-build.bedrock-runtime.Converse",
                                lambda params, **_: seen.append(params))
    with Stubber(client) as stub:
        stub.add_response("converse", text_only)
        stub.add_response("converse", tool_response({"verdict": "ok", "defects": []}))
        assert detector.detect(image).verdict == "ok"
    assert [m["role"] for m in seen[1]["messages"]] == ["user", "assistant", "user"]
    assert f"did not call {TOOL_NAME}" in seen[1]["messages"][2]["content"][0]["text"]


def test_an_oversize_image_is_downscaled_and_the_boxes_scaled_back(client):
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, size=(1200, 1500, 3), dtype=np.uint8)  # incompressible: about 5.4 MB as PNG
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="PNG", compress_level=0)
    image = decode_image(buffer.getvalue(), working_side=512)
    assert len(image.data) > 3_750_000
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None, max_image_side=784)
    sent: list[dict] = []
    client.meta.events.register("before-parameter-build.bedrock-runtime.Converse",
                                lambda params, **_: sent.append(params))
    answer = {"verdict": "defective", "defects": [
        {"defect_class": "burnt", "confidence": 0.9, "box": [0, 0, 784, 627], "reason": "dark"}]}
    with Stubber(client) as stub:
        stub.add_response("converse", tool_response(answer))
        detection = detector.detect(image)
    block = sent[0]["messages"][0]["content"][0]["image"]
    small = Image.open(io.BytesIO(block["source"]["bytes"]))
    assert block["format"] == "jpeg" and len(block["source"]["bytes"]) <= 3_750_000
    assert small.size == (784, 627)
    assert "784 x 627 pixels" in sent[0]["messages"][0]["content"][1]["text"]
    # the model's box on the small image, back in the uploaded image's pixels
    assert detection.defects[0].box == [0, 0, 1500, 1200]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"verdict": "defective", "defects": [{"defect_class": "mouldy", "confidence": 0.9, "box": [1, 1, 9, 9],
                                               "reason": "x"}]}, "defect_class must be one of"),
        ({"verdict": "defective", "defects": [{"defect_class": "burnt", "confidence": "high",
                                               "box": [1, 1, 9, 9], "reason": "x"}]}, "confidence must be a number"),
        ({"verdict": "defective", "defects": [{"defect_class": "burnt", "confidence": 0.8, "box": [1, 2],
                                               "reason": "x"}]}, "box must be four numbers"),
        ({"verdict": "ok", "defects": [{"defect_class": "burnt", "confidence": 0.8, "box": [1, 1, 9, 9],
                                        "reason": "x"}]}, "contradicts"),
        ({"verdict": "maybe", "defects": []}, "verdict must be"),
        ({"verdict": "defective"}, "defects must be a list"),
    ],
)
def test_malformed_tool_input_is_rejected_with_a_clear_error(client, image, answer, message):
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None)  # one re-ask, then refuse
    with Stubber(client) as stub:
        stub.add_response("converse", tool_response(answer))
        stub.add_response("converse", tool_response(answer))
        with pytest.raises(DetectionError, match=message):
            detector.detect(image)
        stub.assert_no_pending_responses()


def test_malformed_answer_is_asked_again_once(client, image):
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None)
    with Stubber(client) as stub:
        stub.add_response("converse", tool_response({"verdict": "maybe", "defects": []}))
        stub.add_response("converse", tool_response({"verdict": "ok", "defects": []}))
        assert detector.detect(image).verdict == "ok"


def test_answer_without_the_tool_is_rejected(client, image):
    detector = BedrockDetector(MODEL_ID, client=client, sleep=lambda s: None, invalid_answer_retries=0)
    text_only = {"output": {"message": {"role": "assistant", "content": [{"text": "looks fine"}]}},
                 "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
                 "metrics": {"latencyMs": 1}}
    with Stubber(client) as stub:
        stub.add_response("converse", text_only)
        with pytest.raises(DetectionError, match=f"did not call {TOOL_NAME}"):
            detector.detect(image)
