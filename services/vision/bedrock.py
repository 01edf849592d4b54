"""The `bedrock` detector: a vision-language model through the Bedrock Converse API.

The image goes in as a Converse image block; the answer is forced into JSON through tool use: one tool,
`report_cookie_inspection`, whose input schema is the inspection (verdict, defects with class, confidence, box
and a short reason), and `toolChoice` naming that tool (`{"any": {}}` for models that do not support naming one).
The tool input is validated: anything malformed is asked for once more, in the same conversation with the
validation error as the tool's result (so the model sees what to correct), then refused with a DetectionError
that says what was wrong. Throttling and cold starts (ThrottlingException, ModelNotReadyException,
ServiceUnavailableException) are retried here with capped exponential backoff and jitter; botocore's own retries
are switched off so the attempts do not multiply. A ValidationException (the request or image refused) or an
AccessDeniedException / ResourceNotFoundException (no access to the model) is permanent: no retry, and the
intake answers 422 or 500, never 503 "try again". An image over Bedrock's limits (3.75 MB, 8000 px; by default
we send at most 1568 px, what the models see anyway) is downscaled first and the boxes scaled back.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from services.vision.classes import DEFECT_CLASSES
from services.vision.detector import (
    Defect,
    Detection,
    DetectionError,
    ModelRef,
    PermanentDetectionError,
    detection_from_classes,
)
from services.vision.imaging import DecodedImage

log = logging.getLogger(__name__)

TOOL_NAME = "report_cookie_inspection"
RETRYABLE_ERRORS = frozenset({"ThrottlingException", "ModelNotReadyException", "ServiceUnavailableException"})
# permanent: the request (the image) is refused, or the service cannot use the model; the intake's answer
PERMANENT_ERRORS = {"ValidationException": 422, "AccessDeniedException": 500, "ResourceNotFoundException": 500}
MAX_IMAGE_BYTES = 3_750_000  # Converse's limit per image
MAX_IMAGE_SIDE = 1568  # larger images are downscaled by the models anyway; Converse's own limit is 8000

INSPECTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["ok", "defective"],
                    "description": "ok when the cookie has no defect at all, else defective"},
        "defects": {
            "type": "array",
            "description": "every defect seen; empty when the verdict is ok",
            "items": {
                "type": "object",
                "properties": {
                    "defect_class": {"type": "string", "enum": list(DEFECT_CLASSES)},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "box": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
                            "description": "x0, y0, x1, y1 in image pixels, origin top left"},
                    "reason": {"type": "string", "description": "what in the image shows it, in a few words"},
                },
                "required": ["defect_class", "confidence", "box", "reason"],
            },
        },
    },
    "required": ["verdict", "defects"],
}

SYSTEM_PROMPT = (
    "You inspect cookies on a conveyor belt from a camera image taken from above. Defect classes: "
    "cracked (dark jagged lines in the dough), deformed (outline clearly not round), bubbled (raised light "
    "blisters on the surface), burnt (dark brown to black, over-baked). A cookie may have several defects or "
    f"none. Report through the {TOOL_NAME} tool only, with a box in image pixels for each defect."
)


class BedrockDetector:
    """Judges images with a Bedrock vision model; `client` is a boto3 `bedrock-runtime` client."""

    def __init__(
        self,
        model_id: str = "us.amazon.nova-lite-v1:0",
        region: str | None = None,
        client: Any | None = None,
        *,
        version: str | None = None,
        tool_choice: str = "tool",
        max_tokens: int = 800,
        temperature: float = 0.0,
        max_attempts: int = 6,
        base_delay_s: float = 0.5,
        max_delay_s: float = 10.0,
        invalid_answer_retries: int = 1,
        sleep: Callable[[float], None] = time.sleep,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        max_image_side: int = MAX_IMAGE_SIDE,
    ) -> None:
        if tool_choice not in ("tool", "any"):
            raise ValueError("tool_choice must be 'tool' (name the tool) or 'any' (models that cannot name one)")
        if client is None:
            import boto3
            from botocore.config import Config

            # our own retry loop below: botocore's would multiply the attempts and hide them from the metrics
            client = boto3.client("bedrock-runtime", region_name=region,
                                  config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
        self.client = client
        self.model = ModelRef("bedrock", model_id, version)
        self.tool_choice = {"tool": {"name": TOOL_NAME}} if tool_choice == "tool" else {"any": {}}
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_attempts = max(1, max_attempts)
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.invalid_answer_retries = invalid_answer_retries
        self.sleep = sleep
        self.max_image_bytes = max_image_bytes
        self.max_image_side = max_image_side
        self.retries = 0  # throttling / cold-start retries made, for metrics and tests

    def image_block(self, image: DecodedImage) -> tuple[bytes, str, int, int]:
        """The bytes to send, their format and size: the image as received when within Bedrock's limits, else
        downscaled (and re-encoded as JPEG) until it is."""
        from PIL import Image

        data, image_format = image.data, image.format
        width, height = image.width, image.height
        if data and len(data) <= self.max_image_bytes and max(width, height) <= self.max_image_side:
            return data, image_format, width, height
        source = Image.open(io.BytesIO(data)).convert("RGB") if data else Image.fromarray(image.pixels)
        side, quality = min(self.max_image_side, max(source.size)), 90
        while True:
            reduced = source.copy()
            reduced.thumbnail((side, side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            reduced.save(buffer, format="JPEG", quality=quality)
            if buffer.tell() <= self.max_image_bytes or side <= 64:
                return buffer.getvalue(), "jpeg", reduced.width, reduced.height
            side, quality = int(side * 0.75), max(60, quality - 10)

    def request(self, image: DecodedImage) -> dict[str, Any]:
        return self._request(*self.image_block(image))

    def _request(self, data: bytes, image_format: str, width: int, height: int) -> dict[str, Any]:
        prompt = (f"Inspect this cookie. The image is {width} x {height} pixels. "
                  f"Call {TOOL_NAME} with your verdict and every defect you see.")
        return {
            "modelId": self.model.model_id,
            "system": [{"text": SYSTEM_PROMPT}],
            "messages": [{"role": "user", "content": [
                {"image": {"format": image_format, "source": {"bytes": data}}},
                {"text": prompt},
            ]}],
            "inferenceConfig": {"maxTokens": self.max_tokens, "temperature": self.temperature},
            "toolConfig": {
                "tools": [{"toolSpec": {"name": TOOL_NAME, "description": "Report the inspection of one cookie.",
                                        "inputSchema": {"json": INSPECTION_SCHEMA}}}],
                "toolChoice": self.tool_choice,
            },
        }

    def _converse(self, request: dict[str, Any]) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        for attempt in range(1, self.max_attempts + 1):
            try:
                return self.client.converse(**request)
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code in PERMANENT_ERRORS:
                    message = error.response.get("Error", {}).get("Message", "")
                    raise PermanentDetectionError(f"bedrock {code}: {message}", PERMANENT_ERRORS[code]) from None
                if code not in RETRYABLE_ERRORS or attempt == self.max_attempts:
                    raise
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
                delay = random.uniform(delay / 2, delay)  # jitter: many cameras must not retry in step
                self.retries += 1
                log.warning("bedrock %s on attempt %d; retrying in %.2f s", code, attempt, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def detect(self, image: DecodedImage) -> Detection:
        started = time.perf_counter()
        data, image_format, width, height = self.image_block(image)
        request = self._request(data, image_format, width, height)
        problem = ""
        for _ in range(1 + self.invalid_answer_retries):
            response = self._converse(request)
            try:
                defects = parse_tool_answer(response, width, height)
            except DetectionError as error:
                problem = str(error)
                log.warning("bedrock answer refused: %s", problem)
                request = reask(request, response, problem)
                continue
            if (width, height) != (image.width, image.height):  # boxes back to the image's own pixels
                fx, fy = image.width / width, image.height / height
                defects = [Defect(d.defect_class, d.confidence,
                                  [round(d.box[0] * fx), round(d.box[1] * fy), min(image.width, round(d.box[2] * fx)),
                                   min(image.height, round(d.box[3] * fy))], d.reason) for d in defects]
            return detection_from_classes(defects, self.model, started,
                                          {d.defect_class: d.confidence for d in defects})
        raise DetectionError(problem)


def reask(request: dict[str, Any], response: dict[str, Any], problem: str) -> dict[str, Any]:
    """The request continued with the model's answer and what was wrong with it, so the next answer can differ.

    A tool call gets a toolResult with status error (Converse requires one for every toolUse); an answer
    without the tool gets a user turn saying the tool must be called."""
    answer = response.get("output", {}).get("message") or {"role": "assistant", "content": [{"text": "(empty)"}]}
    uses = [b["toolUse"] for b in answer.get("content", []) if isinstance(b, dict) and "toolUse" in b]
    correction = (f"That answer was invalid: {problem}. Call {TOOL_NAME} again with a corrected answer that "
                  "follows the input schema exactly.")
    if uses:
        follow_up = [{"toolResult": {"toolUseId": use.get("toolUseId", ""), "status": "error",
                                     "content": [{"text": correction}]}} for use in uses]
    else:
        follow_up = [{"text": correction}]
    return {**request, "messages": [*request["messages"], {"role": "assistant", "content": answer["content"]},
                                    {"role": "user", "content": follow_up}]}


def parse_tool_answer(response: dict[str, Any], width: int, height: int) -> list[Defect]:
    """The defects in a Converse response that called the inspection tool; DetectionError says what is wrong."""
    stop = response.get("stopReason")
    content = response.get("output", {}).get("message", {}).get("content", [])
    uses = [block["toolUse"] for block in content if isinstance(block, dict) and "toolUse" in block]
    if stop != "tool_use" or not uses:
        raise DetectionError(f"bedrock answer did not call {TOOL_NAME} (stopReason {stop!r})")
    use = next((u for u in uses if u.get("name") == TOOL_NAME), None)
    if use is None:
        raise DetectionError(f"bedrock answer called {uses[0].get('name')!r}, not {TOOL_NAME}")
    answer = use.get("input")
    if not isinstance(answer, dict):
        raise DetectionError("bedrock tool input is not a JSON object")
    verdict = answer.get("verdict")
    if verdict not in ("ok", "defective"):
        raise DetectionError(f"bedrock tool input: verdict must be 'ok' or 'defective', got {verdict!r}")
    items = answer.get("defects")
    if not isinstance(items, list):
        raise DetectionError("bedrock tool input: defects must be a list")
    defects: dict[str, Defect] = {}
    for index, item in enumerate(items):
        where = f"bedrock tool input: defects[{index}]"
        if not isinstance(item, dict):
            raise DetectionError(f"{where} is not an object")
        name = item.get("defect_class")
        if name not in DEFECT_CLASSES:
            raise DetectionError(f"{where}.defect_class must be one of {', '.join(DEFECT_CLASSES)}, got {name!r}")
        confidence = item.get("confidence")
        if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
            raise DetectionError(f"{where}.confidence must be a number between 0 and 1, got {confidence!r}")
        box = item.get("box")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)):
            raise DetectionError(f"{where}.box must be four numbers x0, y0, x1, y1, got {box!r}")
        x0, y0, x1, y1 = (round(v) for v in box)
        x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
        y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
        if x1 <= x0 or y1 <= y0:
            raise DetectionError(f"{where}.box {box!r} is empty inside the {width}x{height} image")
        reason = item.get("reason")
        reason = str(reason)[:200] if reason is not None else None
        previous = defects.get(name)
        if previous is None or confidence > previous.confidence:  # one entry per class: the surest one
            defects[name] = Defect(name, round(float(confidence), 4), [x0, y0, x1, y1], reason)
    if verdict == "ok" and defects:
        raise DetectionError(f"bedrock tool input: verdict 'ok' contradicts {len(defects)} defect(s)")
    if verdict == "defective" and not defects:
        raise DetectionError("bedrock tool input: verdict 'defective' but no defect listed")
    return list(defects.values())
