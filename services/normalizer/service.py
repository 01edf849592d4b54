"""The normalizer service: consumer loop over the raw topics, the lake sink, and the HTTP API."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from lineguard import telemetry
from lineguard.health import BackgroundHttpServer, Health, create_app
from lineguard.kafka import ConsumerLoop, Output, Record
from lineguard.logs import event, get_logger, setup_logging
from lineguard.plant import PlantModelError, load_plant
from lineguard.settings import SettingsError
from services.normalizer.api import AssetGraphApi
from services.normalizer.lake import LakeWriter, S3Store, open_store
from services.normalizer.mapping import RAW_ALARMS, RAW_INSPECTIONS, RAW_TELEMETRY, ROUTES, Normalizer
from services.normalizer.settings import NormalizerSettings

log = get_logger(__name__)

INPUT_TOPICS = [RAW_TELEMETRY, RAW_ALARMS, RAW_INSPECTIONS]


class Pipeline:
    """The loop's handler: normalize one raw record, count it, and keep its row for the lake sink."""

    def __init__(self, normalizer: Normalizer, service: str = "normalizer", lake: bool = True) -> None:
        self.normalizer = normalizer
        self.lake = lake
        self._rows: dict[tuple[str, int, int], tuple[str, dict]] = {}
        records_in = telemetry.counter(service, "records_in", "Raw records handled, by kind.", ["kind"])
        records_out = telemetry.counter(service, "records_out", "Unified records produced, by kind.", ["kind"])
        rejected = telemetry.counter(service, "records_rejected", "Raw records that could not be normalized "
                                     "(dead-lettered), by kind and reason.", ["kind", "reason"])
        self._unknown = telemetry.counter(service, "unknown_devices", "New unknown devices or metrics seen.")
        # label children resolved once: the hot path only increments
        self._in = {topic: records_in.labels(kind) for topic, (kind, _) in ROUTES.items()}
        self._out = {topic: records_out.labels(kind) for topic, (kind, _) in ROUTES.items()}
        self._rejected = rejected
        self._kind = {topic: kind for topic, (kind, _) in ROUTES.items()}
        normalizer._on_unknown_device = lambda _key: self._unknown.inc()

    def handle(self, record: Record) -> list[Output]:
        topic = record.topic
        counter = self._in.get(topic)
        if counter is not None:
            counter.inc()
        try:
            outputs = self.normalizer.handle(record)
        except Exception as exc:
            self._rejected.labels(self._kind.get(topic, "unknown"), type(exc).__name__).inc()
            raise
        self._out[topic].inc(len(outputs))
        if self.lake:
            self._rows[(topic, record.partition, record.offset)] = (self._kind[topic], outputs[0].value)  # type: ignore[index]
        return outputs

    def lake_row(self, record: Record) -> tuple[str, dict] | None:
        """The lake row of a handled record (handed over once)."""
        return self._rows.pop((record.topic, record.partition, record.offset), None)


def build_app(health: Health, api: AssetGraphApi) -> web.Application:
    app = create_app(health)
    api.add_routes(app)
    return app


def main(argv: list[str] | None = None) -> int:
    try:
        settings = NormalizerSettings.from_env()
    except SettingsError as exc:
        print(f"normalizer: invalid settings: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.service_name, settings.log_level)
    telemetry.setup_tracing(settings.service_name)
    try:
        plant = load_plant(settings.plant_path())
    except PlantModelError as exc:
        event(log, "plant_model_invalid", level=logging.ERROR, error=str(exc))
        return 2
    normalizer = Normalizer(plant, stale_after_ms=int(settings.stale_after_s * 1000),
                            max_clock_skew_ms=int(settings.max_clock_skew_s * 1000))
    pipeline = Pipeline(normalizer, settings.service_name, lake=settings.lake_enabled)
    sink: LakeWriter | None = None
    if settings.lake_enabled:
        store = open_store(settings.lake_url, settings.lake_dir, settings.lake_endpoint_url, settings.lake_region)
        if isinstance(store, S3Store):
            try:
                store.check()
            except Exception as exc:  # noqa: BLE001 - any S3 failure at start-up is a configuration problem
                event(log, "lake_unreachable", level=logging.ERROR, lake=store.describe(), error=str(exc))
                return 2
        sink = LakeWriter(store, pipeline.lake_row, topic_prefix=settings.topic_prefix,
                          max_rows=settings.lake_max_rows,
                          rotate_interval_ms=int(settings.lake_rotate_interval_s * 1000),
                          compression=settings.lake_compression, service=settings.service_name)
    health = Health(settings.service_name, settings.liveness_timeout_s)
    loop = ConsumerLoop(settings, settings.group_id, INPUT_TOPICS, pipeline.handle, sink=sink,
                        batch_size=settings.batch_size, health=health)
    api = AssetGraphApi(normalizer)
    server = BackgroundHttpServer(lambda: build_app(health, api), settings.http_host, settings.http_port)
    server.start()
    loop.install_signal_handlers()
    event(log, "normalizer_started", http_port=server.port, plant=plant.source,
          lake=sink.store.describe() if sink else None, settings=settings.redacted())
    try:
        stats = loop.run()
    finally:
        server.stop()
    event(log, "normalizer_stopped", **stats.__dict__,
          lake_objects=sink.objects_written if sink else 0, lake_rows=sink.rows_written if sink else 0)
    return 0
