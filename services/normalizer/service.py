"""The normalizer service: consumer loop over the raw topics, the lake sink, and the HTTP API."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence

from aiohttp import web
from confluent_kafka import KafkaException
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily

from lineguard import telemetry
from lineguard.catalog import load_catalog
from lineguard.health import Health, create_app
from lineguard.kafka import Output, Record
from lineguard.logs import event, get_logger
from lineguard.plant import PlantModelError, load_plant
from lineguard.service import Runtime, Service, StartupError, run_service
from services.normalizer.alarm_state import AlarmChangelog, ensure_changelog
from services.normalizer.api import AssetGraphApi
from services.normalizer.lake import LakeWriter, S3Store, open_store
from services.normalizer.mapping import RAW_ALARMS, RAW_INSPECTIONS, RAW_TELEMETRY, ROUTES, Normalizer
from services.normalizer.settings import NormalizerSettings

log = get_logger(__name__)

INPUT_TOPICS = [RAW_TELEMETRY, RAW_ALARMS, RAW_INSPECTIONS]


class Pipeline:
    """The loop's handler: normalize one raw record and count it. The lake sink gets each handled record with its
    outputs from the loop (`lake_row` turns them into a row), so nothing is kept here between the two.

    Counting costs one integer addition per record; the counters reach Prometheus at scrape time (a collector),
    not through a metric call per record on the hot path."""

    def __init__(self, normalizer: Normalizer, service: str = "normalizer", lake: bool = True,
                 changelog: AlarmChangelog | None = None) -> None:
        self.normalizer = normalizer
        self.lake = lake
        self.changelog = changelog  # every alarm state also goes to the alarm changelog (partition-scoped restore)
        self.records_in: dict[str, int] = {kind: 0 for kind, _ in ROUTES.values()}
        self.records_out: dict[str, int] = {kind: 0 for kind, _ in ROUTES.values()}
        self.rejected: dict[tuple[str, str], int] = {}
        self.unknown_devices = 0
        self._kind = {topic: kind for topic, (kind, _) in ROUTES.items()}
        normalizer.on_unknown_device = self._count_unknown
        _PipelineCollector.attach(service, self)

    def _count_unknown(self, _key: str) -> None:
        self.unknown_devices += 1

    def handle(self, record: Record) -> list[Output]:
        topic = record.topic
        kind = self._kind.get(topic, "unknown")
        if kind in self.records_in:
            self.records_in[kind] += 1
        try:
            outputs = self.normalizer.handle(record)
        except Exception as exc:
            key = (kind, type(exc).__name__)
            self.rejected[key] = self.rejected.get(key, 0) + 1
            raise
        self.records_out[kind] += len(outputs)
        if topic == RAW_ALARMS and self.changelog is not None and outputs:
            outputs = [*outputs, self.changelog.output(record, outputs[0].value)]  # type: ignore[arg-type]
        return outputs

    def lake_row(self, record: Record, outputs: Sequence[Output]) -> tuple[str, dict] | None:
        """The lake row of a handled record: (table, its unified record), from the outputs the loop hands the
        sink with the record."""
        if not outputs or not self.lake:
            return None
        return self._kind.get(record.topic, "unknown"), outputs[0].value  # type: ignore[return-value]


class _PipelineCollector:
    """Exposes the pipelines' plain integer counters as Prometheus counters at scrape time."""

    _by_service: dict[str, _PipelineCollector] = {}

    def __init__(self, service: str) -> None:
        self.service = service
        self.pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()

    @classmethod
    def attach(cls, service: str, pipeline: Pipeline) -> None:
        collector = cls._by_service.get(service)
        if collector is None:
            collector = cls._by_service[service] = cls(service)
            REGISTRY.register(collector)
        collector.pipelines.add(pipeline)

    def describe(self) -> list:
        return []  # metrics are only known at collect time

    def collect(self) -> Iterator[CounterMetricFamily]:
        name = telemetry.metric_name(self.service, "")
        records_in = CounterMetricFamily(name + "records_in", "Raw records handled, by kind.", labels=["kind"])
        records_out = CounterMetricFamily(name + "records_out", "Unified records produced, by kind.",
                                          labels=["kind"])
        rejected = CounterMetricFamily(name + "records_rejected", "Raw records that could not be normalized "
                                       "(dead-lettered), by kind and reason.", labels=["kind", "reason"])
        unknown = CounterMetricFamily(name + "unknown_devices", "New unknown devices or metrics seen.")
        totals_in: dict[str, int] = {}
        totals_out: dict[str, int] = {}
        totals_rejected: dict[tuple[str, str], int] = {}
        unknown_total = 0
        for pipeline in list(self.pipelines):
            for kind, n in pipeline.records_in.items():
                totals_in[kind] = totals_in.get(kind, 0) + n
            for kind, n in pipeline.records_out.items():
                totals_out[kind] = totals_out.get(kind, 0) + n
            for key, n in list(pipeline.rejected.items()):
                totals_rejected[key] = totals_rejected.get(key, 0) + n
            unknown_total += pipeline.unknown_devices
        for kind, n in totals_in.items():
            records_in.add_metric([kind], n)
        for kind, n in totals_out.items():
            records_out.add_metric([kind], n)
        for (kind, reason), n in totals_rejected.items():
            rejected.add_metric([kind, reason], n)
        unknown.add_metric([], unknown_total)
        yield from (records_in, records_out, rejected, unknown)


def build_app(health: Health, api: AssetGraphApi) -> web.Application:
    app = create_app(health)
    api.add_routes(app)
    return app


def build(rt: Runtime[NormalizerSettings]) -> Service:
    """The normalizer for lineguard.service: the loop over the raw topics with the lake sink, the asset graph
    API on the same port, and the alarm state restored before the first record."""
    settings = rt.settings
    try:
        plant = load_plant(settings.plant_path())
    except PlantModelError as exc:
        raise StartupError(f"plant model invalid: {exc}") from exc
    normalizer = Normalizer(plant, stale_after_ms=int(settings.stale_after_s * 1000),
                            max_clock_skew_ms=int(settings.max_clock_skew_s * 1000),
                            max_clock_rate=settings.max_clock_rate)
    try:
        # Check mode (--check-config) reaches no broker: the catalog's partition count stands in.
        alarm_partitions = (load_catalog(settings.schemas_dir)[RAW_ALARMS].partitions if rt.check_only
                            else ensure_changelog(settings))
    except (KafkaException, ValueError) as exc:
        raise StartupError(f"alarm changelog: {exc}") from exc
    changelog = AlarmChangelog(settings, normalizer.alarms, rt.producer(), alarm_partitions)
    pipeline = Pipeline(normalizer, settings.service_name, lake=settings.lake_enabled, changelog=changelog)
    sink: LakeWriter | None = None
    if settings.lake_enabled:
        store = open_store(settings.lake_url, settings.lake_dir, settings.lake_endpoint_url, settings.lake_region)
        if isinstance(store, S3Store) and not rt.check_only:  # check mode (--check-config) reaches no bucket
            try:
                store.check()
            except Exception as exc:  # noqa: BLE001 - any S3 failure at start-up is a configuration problem
                raise StartupError(f"lake unreachable: {store.describe()}: {exc}") from exc
        sink = LakeWriter(store, pipeline.lake_row, topic_prefix=settings.topic_prefix,
                          max_rows=settings.lake_max_rows,
                          rotate_interval_ms=int(settings.lake_rotate_interval_s * 1000),
                          compression=settings.lake_compression, service=settings.service_name,
                          background=settings.lake_background)
    # Bad input is what the mapping rejects (NormalizeError, unit and alarm-action errors: all ValueErrors);
    # anything else from the handler is a bug that stops the service rather than dead-lettering every record.
    # The alarm state is restored per assignment (the changelog partitions of the assigned raw.alarms.v1
    # partitions, before any of their records) and dropped on revoke: `state=changelog`.
    loop = rt.consumer_loop(settings.group_id, INPUT_TOPICS, pipeline.handle, sink=sink, state=changelog,
                            batch_size=settings.batch_size, dead_letter_on=(ValueError,))
    api = AssetGraphApi(normalizer, token=settings.normalizer_api_token, lake=sink.store if sink else None)

    def restore() -> None:
        # The alarm state is restored on each partition assignment (AlarmChangelog.on_assign), not here.
        event(log, "normalizer_started", http_port=rt.port, plant=plant.source,
              lake=sink.store.describe() if sink else None)

    def stopped() -> None:
        event(log, "normalizer_stopped", **loop.stats.__dict__,
              lake_objects=sink.objects_written if sink else 0, lake_rows=sink.rows_written if sink else 0)

    return Service(loop=loop, routes=api.add_routes, restore=restore, on_stop=stopped)


def main(argv: list[str] | None = None) -> None:
    run_service(NormalizerSettings, build)
