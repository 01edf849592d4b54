"""The `bedrock` detector: a vision-language model through the Bedrock Converse API.

The image goes in as a Converse image block; the answer is forced into JSON through tool use: one tool,
`report_cookie_inspection`, whose input schema is the inspection (verdict, defects with class, confidence, box
and a short reason), and `toolChoice` naming that tool (`{"any": {}}` for models that do not support naming one).
The tool input is validated: anything malformed is asked for once more, then refused with a DetectionError
that says what was wrong. Throttling and cold starts (ThrottlingException, ModelNotReadyException,
ServiceUnavailableException) are retried here with capped exponential backoff and jitter; botocore's own retries
are switched off so the attempts do not multiply.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from services.vision.detector import (
    DEFECT_CLASSES,
    Defect,
    Detection,
    DetectionError,
    ModelRef,
    detection_from_classes,
)
from services.vision.imaging import DecodedImage

log = logging.getLogger(__name__)

TOOL_NAME = "report_cookie_inspection"
RETRYABLE_ERRORS = frozenset({"ThrottlingException", "ModelNotReadyException", "ServiceUnavailableException"})

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
        self.retries = 0  # throttling / cold-start retries made, for metrics and tests

    def request(self, image: DecodedImage) -> dict[str, Any]:
        data, image_format = image.data, image.format
        if not data:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(image.pixels).save(buffer, format="PNG")
            data, image_format = buffer.getvalue(), "png"
        prompt = (f"Inspect this cookie. The image is {image.width} x {image.height} pixels. "
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
        request = self.request(image)
        problem = ""
        for _ in range(1 + self.invalid_answer_retries):
            response = self._converse(request)
            try:
                defects = parse_tool_answer(response, image.width, image.height)
            except DetectionError as error:
                problem = str(error)
                log.warning("bedrock answer refused: %s", problem)
                continue
            return detection_from_classes(defects, self.model, started,
                                          {d.defect_class: d.confidence for d in defects})
        raise DetectionError(problem)


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
