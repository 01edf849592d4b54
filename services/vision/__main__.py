"""Run the vision service: `python -m services.vision` (settings from LINEGUARD_* environment variables)."""

from __future__ import annotations

from lineguard.logs import event, get_logger
from lineguard.service import Runtime, Service, StartupError, run_service
from services.vision.detector import make_detector
from services.vision.inspections import KafkaInspectionSink
from services.vision.service import VisionService
from services.vision.settings import VisionSettings
from services.vision.store import LocalObjectStore, ObjectStore, S3ObjectStore

log = get_logger("services.vision")


def build_store(settings: VisionSettings) -> ObjectStore:
    if settings.image_store_url:
        return S3ObjectStore(settings.image_store_url, endpoint_url=settings.image_store_endpoint_url,
                             region=settings.image_store_region)
    return LocalObjectStore(settings.image_store_dir)


def build_detector(settings: VisionSettings, name: str | None = None):
    if (name or settings.detector) == "bedrock":
        return make_detector("bedrock", model_id=settings.bedrock_model_id, region=settings.bedrock_region,
                             version=settings.bedrock_model_version, tool_choice=settings.bedrock_tool_choice)
    return make_detector("local", model_path=settings.local_model_path)


def build_fallback(settings: VisionSettings):
    """The detector for images the local one abstains on (Bedrock), or None."""
    if settings.fallback == "bedrock" and settings.detector == "local":
        return build_detector(settings, "bedrock")
    return None


def build(rt: Runtime[VisionSettings]) -> Service:
    """The vision service for lineguard.service: its HTTP API; the detector, image store and producer built
    first (a model file or store that cannot be opened exits 2)."""
    from lineguard.kafka import Producer

    settings = rt.settings
    try:
        detector, store, fallback = build_detector(settings), build_store(settings), build_fallback(settings)
    except (OSError, ValueError) as exc:
        raise StartupError(f"vision: {type(exc).__name__}: {exc}") from exc
    service = VisionService(
        detector, store, KafkaInspectionSink(Producer(settings)),
        service_name=settings.service_name, max_image_bytes=settings.max_image_bytes,
        max_batch=settings.max_batch, expected_size=settings.expected_size(),
        detector_threads=settings.detector_threads, max_pixels=settings.max_pixels,
        working_side=settings.detect_max_side, fallback=fallback,
        tokens=settings.token_list())
    event(log, "vision_built", detector=service.detector.model.to_dict(), cameras=len(service.tokens))
    if not service.tokens:
        event(log, "vision_api_disabled", level=30, reason="LINEGUARD_VISION_TOKENS is unset: every image is refused")

    async def close() -> None:
        await service.close()  # flushes the producer (after the HTTP server finished in-flight requests)
        event(log, "vision_stopped")

    return Service(routes=service.add_routes, on_stop=close, client_max_size=settings.max_request_bytes)


def main() -> None:
    run_service(VisionSettings, build)


if __name__ == "__main__":
    main()
