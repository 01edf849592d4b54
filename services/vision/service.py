"""The vision service: image intake over HTTP (aiohttp), one inspection per accepted image.

Routes (next to /livez, /readyz and /metrics from lineguard.health):

    POST /v1/images         one image: multipart/form-data or JSON (see services/vision/README.md)
    POST /v1/images/batch   JSON {"items": [...]}: several images, each answered on its own
    GET  /v1/detector       which detector judges the images

Each image: metadata checked -> image decoded and checked (a large image reduced while decoding) -> judged by
the detector (in a thread, off the event loop) -> stored in the object store (unless it came from there, as a
claim-check reference) -> the inspection published through the sink, which returns only once the record is
durably written -> 200 with the inspection. Anything wrong with the input is a 4xx naming the problem; nothing
is published for it and a refused image is not kept. When the detector abstains (the image is unlike anything
it was trained on), the fallback detector (Bedrock) judges it if one is configured; otherwise the image is kept
for labelling, counted, and published as a distinct result, verdict `abstained` with its reason (consumers count
it as "not judged": neither a defect nor a good item); the answer is 200 with that record.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from lineguard import telemetry
from lineguard.logs import event, get_logger
from services.vision.classes import DEFECT_CLASSES
from services.vision.detector import Detection, DetectionError, Detector, PermanentDetectionError
from services.vision.imaging import (
    MAX_PIXELS,
    WORKING_SIDE,
    DecodedImage,
    ImageError,
    ImageTooLargeError,
    NotAnImageError,
    decode_image,
)
from services.vision.inspections import ImageMeta, InspectionSink, build_inspection
from services.vision.store import ForeignReferenceError, ObjectNotFoundError, ObjectStore, image_key

log = get_logger(__name__)

_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
_MAX_ID = 128


class IntakeError(Exception):
    """Bad input: `status` is the HTTP answer, the message says what is wrong."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # low-cardinality label for the rejected-images metric


@dataclass
class Upload:
    meta: ImageMeta
    data: bytes | None = None  # the image, or
    image_uri: str | None = None  # a claim-check reference to an image already in the store


def parse_captured_at(value: Any) -> datetime:
    """ISO 8601 with a timezone (2026-11-29T12:00:00Z) or milliseconds since the Unix epoch."""
    if isinstance(value, bool) or value is None or value == "":
        raise IntakeError(400, "captured_at is missing", "missing_metadata")
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        millis = float(value)
        if not 0 < millis < 32503680000000:  # before year 3000
            raise IntakeError(400, f"captured_at {value!r} is not a plausible epoch time in milliseconds",
                              "bad_metadata")
        return datetime.fromtimestamp(millis / 1000.0, UTC)
    if not isinstance(value, str):
        raise IntakeError(400, f"captured_at must be an ISO 8601 time or epoch milliseconds, got {value!r}",
                          "bad_metadata")
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise IntakeError(400, f"captured_at {value!r} is not an ISO 8601 time", "bad_metadata") from None
    if moment.tzinfo is None:
        raise IntakeError(400, f"captured_at {value!r} has no timezone; add Z or an offset", "bad_metadata")
    return moment.astimezone(UTC)


def parse_meta(fields: dict[str, Any]) -> ImageMeta:
    missing = [name for name in ("line_id", "station", "item_id", "captured_at")
               if fields.get(name) in (None, "")]
    if missing:
        raise IntakeError(400, f"missing metadata: {', '.join(missing)}", "missing_metadata")
    for name in ("line_id", "station", "item_id"):
        value = fields[name]
        if not isinstance(value, str):
            raise IntakeError(400, f"{name} must be a string, got {value!r}", "bad_metadata")
        if len(value) > _MAX_ID or not value.isprintable() or value != value.strip():
            raise IntakeError(400, f"{name} must be 1 to {_MAX_ID} printable characters without surrounding "
                                   "spaces", "bad_metadata")
    return ImageMeta(fields["line_id"], fields["station"], fields["item_id"],
                     parse_captured_at(fields["captured_at"]))


class VisionService:
    def __init__(
        self,
        detector: Detector,
        store: ObjectStore,
        sink: InspectionSink,
        *,
        service_name: str = "vision",
        max_image_bytes: int = 4 * 1024 * 1024,
        max_batch: int = 64,
        expected_size: tuple[int, int] | None = None,
        detector_threads: int = 2,
        max_pixels: int | None = MAX_PIXELS,
        working_side: int | None = WORKING_SIDE,
        fallback: Detector | None = None,
        tokens: Sequence[str] = (),
    ) -> None:
        self.detector = detector
        # Bearer tokens of the cameras allowed to post (several cameras, several tokens); none = intake refused.
        self.tokens = tuple(t.encode() for t in tokens if t)
        self.fallback = fallback  # judges what the detector abstains on
        self.max_pixels = max_pixels
        self.working_side = working_side
        self.store = store
        self.sink = sink
        self.max_image_bytes = max_image_bytes
        self.max_batch = max_batch
        self.expected_size = expected_size
        self.executor = ThreadPoolExecutor(detector_threads, thread_name_prefix="detector")
        s = service_name
        self.images = telemetry.counter(s, "images", "Images received, by outcome (inspected or rejected).",
                                        ["outcome"])
        self.rejected = telemetry.counter(s, "images_rejected", "Images refused, by reason.", ["reason"])
        self.verdicts = telemetry.counter(s, "verdicts", "Inspections published, by verdict.", ["verdict"])
        self.defects = telemetry.counter(s, "defects", "Defects reported, by class.", ["defect_class"])
        self.detect_latency = telemetry.histogram(s, "detect_duration_seconds", "Time the detector took per image.",
                                                  ["provider"])
        self.request_latency = telemetry.histogram(s, "request_duration_seconds", "Intake request time.",
                                                   ["route"])
        self.abstentions = telemetry.counter(s, "abstentions", "Images the detector declined to judge, by reason.",
                                             ["reason"])
        self.fallbacks = telemetry.counter(s, "fallbacks", "Abstentions sent to the fallback detector, by outcome.",
                                           ["outcome"])
        for name in DEFECT_CLASSES:  # so every class shows up at 0 before the first defect
            self.defects.labels(name)

    # --- one image ------------------------------------------------------------------------------------------

    async def inspect(self, upload: Upload) -> dict[str, Any]:
        """Judge and publish one image; IntakeError (4xx) for bad input, other errors are the service's own."""
        try:
            inspection = await self._inspect(upload)
        except IntakeError as error:
            self.images.labels("rejected").inc()
            self.rejected.labels(error.reason).inc()
            event(log, "image_rejected", level=20, item_id=upload.meta.item_id, line_id=upload.meta.line_id,
                  status=error.status, reason=error.reason, error=str(error))
            raise
        self.verdicts.labels(inspection["verdict"]).inc()
        if inspection["verdict"] == "abstained":
            self.images.labels("abstained").inc()
            return inspection
        self.images.labels("inspected").inc()
        for defect in inspection["defects"]:
            self.defects.labels(defect["defect_class"]).inc()
        return inspection

    async def _inspect(self, upload: Upload) -> dict[str, Any]:
        data = upload.data
        if upload.image_uri is not None:
            try:
                data = await self.store.get(upload.image_uri)
            except ForeignReferenceError as error:
                raise IntakeError(400, str(error), "foreign_reference") from None
            except ObjectNotFoundError as error:
                raise IntakeError(422, str(error), "reference_not_found") from None
        if data is None:
            raise IntakeError(400, "no image: send the image, or image_uri for one already stored", "no_image")
        loop = asyncio.get_running_loop()
        try:
            decoded = await loop.run_in_executor(
                self.executor,
                lambda: decode_image(data, max_bytes=self.max_image_bytes, expected_size=self.expected_size,
                                     max_pixels=self.max_pixels, working_side=self.working_side))
        except ImageError as error:
            reason = ("not_an_image" if isinstance(error, NotAnImageError)
                      else "too_large" if isinstance(error, ImageTooLargeError) else "bad_image")
            raise IntakeError(error.status, str(error), reason) from None
        detection = await self._detect(self.detector, decoded)
        if detection.abstained:
            self.abstentions.labels(detection.abstention or "unknown").inc()
            event(log, "image_abstained", level=20, item_id=upload.meta.item_id, line_id=upload.meta.line_id,
                  reason=detection.abstention, detail=detection.message)
            if self.fallback is not None:
                detection = await self._ask_fallback(detection, decoded)
        # stored only once judged: an image the detector refused is not kept
        image_uri = upload.image_uri
        if image_uri is None:
            key = image_key(upload.meta.line_id, upload.meta.station, upload.meta.item_id,
                            upload.meta.captured_at, decoded.format)
            image_uri = await self.store.put(key, data, _CONTENT_TYPES[decoded.format])
        inspection = build_inspection(upload.meta, detection, image_uri)
        await self.sink.publish(inspection)  # an abstention too: kept for labelling and published as "not judged"
        if detection.abstained:
            return {**inspection, "reason": inspection["abstention"]["reason"],
                    "message": inspection["abstention"]["message"]}
        return inspection

    async def _detect(self, detector: Detector, decoded: DecodedImage) -> Detection:
        loop = asyncio.get_running_loop()
        try:
            detection = await loop.run_in_executor(self.executor, detector.detect, decoded)
        except PermanentDetectionError as error:  # the model refused this image (or us) for good: no retry
            raise IntakeError(error.status, f"the model refused the image: {error}", "refused_by_model") from None
        except DetectionError as error:
            raise IntakeError(422, f"could not judge the image: {error}", "undetectable") from None
        self.detect_latency.labels(detection.model.provider).observe(detection.latency_ms / 1000.0)
        return detection

    async def _ask_fallback(self, abstained: Detection, decoded: DecodedImage) -> Detection:
        assert self.fallback is not None
        try:
            detection = await self._detect(self.fallback, decoded)
        except IntakeError as error:  # the abstention stands: the image is kept and counted
            self.fallbacks.labels("failed").inc()
            event(log, "fallback_failed", level=30, error=str(error))
            return abstained
        except Exception as error:  # throttled past its retries, network: the abstention stands too
            self.fallbacks.labels("failed").inc()
            event(log, "fallback_failed", level=30, error=repr(error))
            return abstained
        self.fallbacks.labels("judged").inc()
        return detection

    # --- HTTP -----------------------------------------------------------------------------------------------

    async def _read_multipart(self, request: web.Request) -> Upload:
        reader = await request.multipart()
        fields: dict[str, Any] = {}
        data: bytes | None = None
        while (part := await reader.next()) is not None:
            name = getattr(part, "name", None)
            if name == "image":
                chunks, size = [], 0
                while chunk := await part.read_chunk(65536):
                    size += len(chunk)
                    if size > self.max_image_bytes:
                        raise IntakeError(413, f"image is larger than the limit of {self.max_image_bytes} bytes",
                                          "too_large")
                    chunks.append(chunk)
                data = b"".join(chunks)
            elif name:
                value = await part.text()
                if len(value) > 4096:
                    raise IntakeError(400, f"form field {name} is too long", "bad_metadata")
                fields[name] = value
        meta = parse_meta(fields)
        uri = fields.get("image_uri") or None
        if data is not None and uri is not None:
            raise IntakeError(400, "send either the image or image_uri, not both", "bad_request")
        return Upload(meta, data, uri)

    def _upload_from_json(self, item: Any, where: str = "") -> Upload:
        if not isinstance(item, dict):
            raise IntakeError(400, f"{where}expected a JSON object", "bad_request")
        meta = parse_meta(item)
        encoded, uri = item.get("image_base64"), item.get("image_uri")
        if encoded is not None and uri is not None:
            raise IntakeError(400, f"{where}send either image_base64 or image_uri, not both", "bad_request")
        if uri is not None:
            if not isinstance(uri, str) or not uri:
                raise IntakeError(400, f"{where}image_uri must be a non-empty string", "bad_request")
            return Upload(meta, None, uri)
        if not isinstance(encoded, str) or not encoded:
            raise IntakeError(400, f"{where}no image: set image_base64 or image_uri", "no_image")
        if len(encoded) > self.max_image_bytes * 4 // 3 + 8:
            raise IntakeError(413, f"{where}image is larger than the limit of {self.max_image_bytes} bytes",
                              "too_large")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise IntakeError(400, f"{where}image_base64 is not valid base64", "bad_request") from None
        return Upload(meta, data)

    async def _json_body(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except web.HTTPRequestEntityTooLarge:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IntakeError(400, "the body is not valid JSON", "bad_request") from None

    def refused(self, request: web.Request) -> web.Response | None:
        """503 while no token is configured, 401 without one of them; None for an authorised caller."""
        if not self.tokens:
            return web.json_response({"error": "the vision API is disabled: set LINEGUARD_VISION_TOKENS"},
                                     status=503)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given_bytes = given.strip().encode()
        # compare against every token (no early exit), so the time taken does not tell which one nearly matched
        matches = [hmac.compare_digest(given_bytes, token) for token in self.tokens]
        if scheme.lower() != "bearer" or not any(matches):
            self.rejected.labels("unauthorized").inc()
            return web.json_response({"error": "missing or invalid bearer token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="lineguard-vision"'})
        return None

    async def handle_image(self, request: web.Request) -> web.Response:
        if (denied := self.refused(request)) is not None:
            return denied
        started = time.perf_counter()
        try:
            content_type = request.content_type
            if content_type == "multipart/form-data":
                upload = await self._read_multipart(request)
            elif content_type == "application/json":
                upload = self._upload_from_json(await self._json_body(request))
            elif content_type == "application/x-www-form-urlencoded":  # a form with image_uri only
                fields = dict(await request.post())
                upload = Upload(parse_meta(fields), None, str(fields["image_uri"]) if fields.get("image_uri")
                                else None)
            else:
                raise IntakeError(415, f"Content-Type {content_type or 'missing'}: send multipart/form-data "
                                       "or application/json", "bad_request")
            inspection = await self.inspect(upload)
        except IntakeError as error:
            return web.json_response({"error": str(error)}, status=error.status)
        except Exception as error:  # the sink (Kafka) or the store failed: not the client's fault
            event(log, "inspection_failed", level=40, error=repr(error))
            return web.json_response({"error": f"inspection not published: {error}"}, status=503)
        finally:
            self.request_latency.labels("image").observe(time.perf_counter() - started)
        return web.json_response(inspection)

    async def handle_batch(self, request: web.Request) -> web.Response:
        if (denied := self.refused(request)) is not None:
            return denied
        started = time.perf_counter()
        try:
            if request.content_type != "application/json":
                raise IntakeError(415, "a batch is application/json: {\"items\": [...]}", "bad_request")
            body = await self._json_body(request)
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list) or not items:
                raise IntakeError(400, "expected {\"items\": [...]} with at least one image", "bad_request")
            if len(items) > self.max_batch:
                raise IntakeError(413, f"{len(items)} images in one batch; the limit is {self.max_batch}",
                                  "too_large")
        except IntakeError as error:
            self.request_latency.labels("batch").observe(time.perf_counter() - started)
            return web.json_response({"error": str(error)}, status=error.status)

        async def one(index: int, item: Any) -> dict[str, Any]:
            item_id = item.get("item_id") if isinstance(item, dict) else None
            try:
                inspection = await self.inspect(self._upload_from_json(item, f"items[{index}]: "))
            except IntakeError as error:
                return {"item_id": item_id, "status": error.status, "error": str(error)}
            except Exception as error:
                event(log, "inspection_failed", level=40, error=repr(error))
                return {"item_id": item_id, "status": 503, "error": f"inspection not published: {error}"}
            return {"item_id": item_id, "status": 200, "inspection": inspection}

        results = list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))
        statuses = {r["status"] for r in results}
        if statuses == {200}:
            status = 200
        elif 200 in statuses:
            status = 207  # some accepted, some not: each result says which
        else:
            status = statuses.pop() if len(statuses) == 1 else 400
        self.request_latency.labels("batch").observe(time.perf_counter() - started)
        return web.json_response({"results": results}, status=status)

    async def handle_detector(self, request: web.Request) -> web.Response:
        if (denied := self.refused(request)) is not None:
            return denied
        return web.json_response({"model": self.detector.model.to_dict()})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images", self.handle_image)
        app.router.add_post("/v1/images/batch", self.handle_batch)
        app.router.add_get("/v1/detector", self.handle_detector)

    async def close(self) -> None:
        await self.sink.close()
        self.executor.shutdown(wait=True)
