"""Run the vision service: `python -m services.vision` (settings from LINEGUARD_* environment variables)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiohttp import web

from lineguard.health import Health, create_app
from lineguard.logs import event, get_logger
from lineguard.service import start_service, tune_gc
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


def build_detector(settings: VisionSettings):
    if settings.detector == "bedrock":
        return make_detector("bedrock", model_id=settings.bedrock_model_id, region=settings.bedrock_region,
                             version=settings.bedrock_model_version, tool_choice=settings.bedrock_tool_choice)
    return make_detector("local", model_path=settings.local_model_path)


async def serve(settings: VisionSettings) -> None:
    from lineguard.kafka import Producer

    health = Health(settings.service_name, settings.liveness_timeout_s)
    service = VisionService(
        build_detector(settings), build_store(settings), KafkaInspectionSink(Producer(settings)),
        service_name=settings.service_name, max_image_bytes=settings.max_image_bytes,
        max_batch=settings.max_batch, expected_size=settings.expected_size(),
        detector_threads=settings.detector_threads)
    app = create_app(health, client_max_size=settings.max_request_bytes)
    service.add_routes(app)
    tune_gc()
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, settings.http_host, settings.http_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health.set_ready(True)
    event(log, "vision_ready", port=settings.http_port, detector=service.detector.model.to_dict())
    try:
        while not stop.is_set():
            health.beat()  # the event loop is alive and serving
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        health.set_ready(False, "shutting down")
        await runner.cleanup()  # finishes in-flight requests
        await service.close()  # flushes the producer
        event(log, "vision_stopped")


def main() -> None:
    asyncio.run(serve(start_service(VisionSettings)))


if __name__ == "__main__":
    main()
