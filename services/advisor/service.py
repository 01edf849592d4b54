"""The advisor process: unified line topics -> windows per line -> recommendations.v1, plus health and chat.

Windowing runs on the shared confluent-kafka `ConsumerLoop` (main thread); window state lives in memory per line
and is checkpointed to a compacted changelog topic (key: line id, value: the state as zlib-compressed JSON). The
loop commits an input offset only after the state that folded it is in the changelog (the changelog is the
loop's `Sink`), so a worker killed with SIGKILL restarts from its last checkpoint and replays the records after
it; records are deduplicated by id inside a window, so the replay rebuilds the same window.

Evaluations (a window closed, or an immediate trigger) are part of the state as `pending` until their
recommendation is acknowledged by Kafka, so a crash between the two re-runs the evaluation with the same
deterministic id; and on start the advisor reads the tail of recommendations.v1, so an id that was published
just before a crash is not published again. The model call and the publication run on an asyncio thread (with
the HTTP server), so a slow model never stalls consumption.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from lineguard import telemetry
from lineguard.catalog import admin_client, load_catalog
from lineguard.health import BackgroundHttpServer, Health, create_app
from lineguard.kafka import ConsumerLoop, Producer, Record
from lineguard.logs import event, get_logger
from lineguard.plant import PlantModel, load_plant
from lineguard.service import start_service, tune_gc
from services.advisor.engine import Due, EngineConfig, LineState, WindowEngine
from services.advisor.models import ModelError, ModelProvider, create_provider, parse_aliases
from services.advisor.recommend import Advisor, Outcome
from services.advisor.retrieval import Retriever
from services.advisor.settings import AdvisorSettings
from services.advisor.window import LineHistory, LineWindow

log = get_logger(__name__)
SERVICE = "advisor"
KIND_BY_TOPIC = {"line.observations.v1": "observations", "line.alarms.v1": "alarms",
                 "line.inspections.v1": "inspections"}
RECOMMENDATIONS_TOPIC = "recommendations.v1"
# What happened to the recommendations: not windowed, kept in the line's memory (applied, rejected, voted down).
MEMORY_TOPICS = {"actions.v1": "actions", "feedback.v1": "feedback"}

WINDOWS_CLOSED = telemetry.counter(SERVICE, "windows_closed", "Windows closed and evaluated.")
TRIGGERS_FIRED = telemetry.counter(SERVICE, "triggers", "Evaluations that became due, by trigger.", ["trigger"])
RECORDS_FOLDED = telemetry.counter(SERVICE, "records_folded", "Unified records folded into windows.", ["kind"])
LATE_RECORDS = telemetry.counter(SERVICE, "late_records", "Records that arrived after their window closed.")
PUBLISHED = telemetry.counter(SERVICE, "recommendations_published", "Recommendations acknowledged by Kafka.")
DUPLICATES_SKIPPED = telemetry.counter(SERVICE, "duplicates_skipped",
                                       "Evaluations skipped because their id was already published.")
CHECKPOINTS = telemetry.counter(SERVICE, "checkpoints", "Window state checkpoints written to the changelog.",
                                ["outcome"])
OPEN_WINDOWS = telemetry.gauge(SERVICE, "open_windows", "Windows open across lines.")
CLOSE_TO_PUBLISH = telemetry.histogram(SERVICE, "close_to_publish_seconds",
                                       "Wall time from an evaluation becoming due to its recommendation being "
                                       "acknowledged (model time included).", ["trigger"])


def encode_state(state: LineState) -> bytes:
    return zlib.compress(json.dumps(state.to_dict(), separators=(",", ":")).encode(), 3)


def decode_state(data: bytes) -> LineState:
    return LineState.from_dict(json.loads(zlib.decompress(data)))


def build_provider(settings: AdvisorSettings) -> ModelProvider:
    aliases = parse_aliases(settings.model_aliases)
    alias = aliases.get(settings.model_alias)
    if alias is None:
        raise ValueError(f"LINEGUARD_MODEL_ALIAS={settings.model_alias!r} is not a known alias "
                         f"(known: {', '.join(sorted(aliases))})")
    try:
        return create_provider(alias)
    except ModelError as exc:
        # The advisor still works without its model: every recommendation is the analysis, marked fallback.
        event(log, "model_unavailable_using_analysis", level=logging.WARNING, alias=alias.name, error=str(exc))
        return create_provider(aliases["analysis-only"])


class ChangelogSink:
    """The consumer loop's sink: holds back input offsets until the state that folded them is in the changelog."""

    def __init__(self, service: AdvisorService) -> None:
        self.service = service
        self.first_unsaved: dict[tuple[str, int], int] = {}
        self.last_seen: dict[tuple[str, int], int] = {}
        self.last_checkpoint = time.monotonic()

    def write(self, records: list[Record]) -> None:
        with self.service.lock:
            for record in records:
                key = (record.topic, record.partition)
                self.first_unsaved.setdefault(key, record.offset)
                self.last_seen[key] = max(self.last_seen.get(key, -1), record.offset)
        self.service.advance(self.service.lagging_kinds())
        if time.monotonic() - self.last_checkpoint >= self.service.settings.checkpoint_interval_s:
            self.service.checkpoint()

    def held_offsets(self) -> dict[tuple[str, int], int]:
        with self.service.lock:
            return dict(self.first_unsaved)

    def flush(self) -> None:
        self.service.checkpoint()


class AdvisorService:
    def __init__(self, settings: AdvisorSettings, provider: ModelProvider | None = None,
                 plant: PlantModel | None = None) -> None:
        self.settings = settings
        self.plant = plant or load_plant(settings.plant_path())
        self.retriever = Retriever.from_folder(settings.docs_dir)
        self.provider = provider or build_provider(settings)
        self.advisor = Advisor(self.plant, self.retriever, self.provider, model_on_normal=settings.model_on_normal,
                               max_tokens=settings.model_max_tokens)
        self.engine = WindowEngine(EngineConfig(
            window_ms=int(settings.window_s * 1000), grace_ms=int(settings.window_grace_s * 1000),
            cooldown_ms=int(settings.trigger_cooldown_s * 1000), idle_close_ms=int(settings.idle_close_s * 1000)))
        self.health = Health(settings.service_name, settings.liveness_timeout_s)
        self.lock = threading.RLock()
        self.states: dict[str, LineState] = {}
        self.dirty: set[str] = set()
        self.last_record_wall: dict[str, float] = {}
        self.due_since: dict[str, float] = {}
        self.published_ids: set[str] = set()
        self._start_offsets: dict[tuple[str, int], int] = {}  # where a partition starts before its first record
        self.recent: dict[str, deque[dict[str, Any]]] = {}  # line -> latest recommendations (for chat)
        self.outcomes: list[Outcome] = []  # kept for tests and the benchmark (bounded)
        self.latencies: list[tuple[str, float, float]] = []  # (trigger, due -> published s, model s)
        self.folded = 0
        self.sink = ChangelogSink(self)
        self.changelog_producer = Producer(settings)
        self.publisher = Producer(settings)
        self.loop: ConsumerLoop | None = None
        self.http: BackgroundHttpServer | None = None
        self._aio: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Due] | None = None
        self._backlog: list[Due] = []
        self._stopping = threading.Event()

    # --- state and recovery ------------------------------------------------------------------------------

    def ensure_changelog_topic(self) -> None:
        catalog = load_catalog(self.settings.schemas_dir)
        partitions = catalog["line.observations.v1"].partitions  # co-partitioned with the inputs (key: line)
        admin = admin_client(self.settings.kafka_bootstrap, self.settings.kafka_security)
        name = self.settings.topic(self.settings.changelog_topic)
        if name in admin.list_topics(timeout=10).topics:
            return
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=-1,
                                                config={"cleanup.policy": "compact"})])
        for future in futures.values():
            try:
                future.result(15)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise

    def _read_topic(self, topic: str, tail: int | None = None) -> list[tuple[bytes | None, bytes | None]]:
        """Every record of a topic (or the last `tail` of each partition), read with an unsubscribed consumer."""
        full = self.settings.topic(topic)
        consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": f"{full}.reader",
                             "enable.auto.commit": False, **self.settings.kafka_security})
        out: list[tuple[bytes | None, bytes | None]] = []
        try:
            metadata = consumer.list_topics(full, timeout=10)
            if full not in metadata.topics or metadata.topics[full].error is not None:
                return out
            assignments = []
            ends: dict[int, int] = {}
            for partition in metadata.topics[full].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(full, partition), timeout=10)
                if high > low:
                    start = low if tail is None else max(low, high - tail)
                    assignments.append(TopicPartition(full, partition, start))
                    ends[partition] = high
            if not assignments:
                return out
            consumer.assign(assignments)
            deadline = time.monotonic() + 30
            while ends and time.monotonic() < deadline:
                for msg in consumer.consume(1000, 0.5):
                    if msg.error() is not None:
                        continue
                    out.append((msg.key(), msg.value()))
                    if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                        ends.pop(msg.partition(), None)
        finally:
            consumer.close()
        return out

    def restore(self) -> int:
        """Recover every line's state from the changelog and the ids already published; returns lines restored."""
        restored: dict[str, LineState] = {}
        for key, value in self._read_topic(self.settings.changelog_topic):
            if key is None:
                continue
            line = key.decode()
            if value is None:
                restored.pop(line, None)
                continue
            try:
                restored[line] = decode_state(value)
            except (ValueError, zlib.error, KeyError) as exc:
                event(log, "changelog_record_unreadable", level=logging.WARNING, line=line, error=str(exc))
        published: set[str] = set()
        serde = self.publisher.serde
        for _, value in self._read_topic(RECOMMENDATIONS_TOPIC, tail=2000):
            if value is None:
                continue
            try:
                published.add(serde.decode(RECOMMENDATIONS_TOPIC, value)["id"])
            except Exception:  # noqa: BLE001 - a foreign record on the topic is not ours to judge
                continue
        with self.lock:
            self.states.update(restored)
            self.published_ids |= published
            for line in restored:  # idle-closing counts from now, not from before the restart
                self.last_record_wall.setdefault(line, time.monotonic())
            for state in restored.values():
                for due in sorted(state.pending.values(), key=lambda d: (d.window_start, d.trigger)):
                    if due.id in published:
                        self.engine.mark_done(state, due.id)
                        self.dirty.add(state.line_id)
                    else:
                        self._enqueue(due)
        event(log, "state_restored", lines=len(restored), published_ids=len(published),
              pending=sum(len(s.pending) for s in restored.values()))
        return len(restored)

    def checkpoint(self) -> bool:
        """Write the state of every changed line to the changelog; release the offsets it covers."""
        with self.lock:
            lines = sorted(self.dirty)
            blobs = [(line, encode_state(self.states[line])) for line in lines if line in self.states]
            covered = dict(self.sink.last_seen)
            self.dirty.clear()
            self.sink.last_checkpoint = time.monotonic()
            OPEN_WINDOWS.set(sum(len(s.windows) for s in self.states.values()))
        failures: list[str] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for line, blob in blobs:
            self.changelog_producer.produce(self.settings.changelog_topic, line, blob, on_delivery=on_delivery,
                                            trace=False)
        remaining = self.changelog_producer.flush(30)
        with self.lock:
            if remaining or failures:
                self.dirty.update(lines)
                CHECKPOINTS.labels("failed").inc()
                event(log, "checkpoint_failed", level=logging.WARNING, failures=failures[:3], remaining=remaining)
                return False
            for key, offset in covered.items():
                if self.sink.last_seen.get(key, -1) > offset:
                    self.sink.first_unsaved[key] = offset + 1  # records after the snapshot stay held
                else:
                    self.sink.first_unsaved.pop(key, None)
        if blobs:
            CHECKPOINTS.labels("ok").inc()
        return True

    # --- the consumer loop's handler ---------------------------------------------------------------------

    def handle(self, record: Record) -> None:
        if record.topic in MEMORY_TOPICS:
            self._remember(record)
            return
        kind = KIND_BY_TOPIC.get(record.topic)
        if kind is None:
            raise ValueError(f"the advisor does not read topic {record.topic!r}")
        value = record.value
        line = value.get("line_id") if isinstance(value, dict) else None
        if line not in self.plant.lines:
            raise ValueError(f"unknown line {line!r} (known: {', '.join(sorted(self.plant.lines))})")
        with self.lock:
            state = self.states.get(line)
            if state is None:
                state = self.states[line] = LineState(line)
            late_before = state.late_records
            dues = self.engine.add(state, kind, value)  # immediate triggers; windows close in advance()
            if state.late_records != late_before:
                LATE_RECORDS.inc()
            self.dirty.add(line)
            self.last_record_wall[line] = time.monotonic()
        RECORDS_FOLDED.labels(kind).inc()
        self.folded += 1
        for due in dues:
            self._enqueue(due)

    def _remember(self, record: Record) -> None:
        value = record.value
        line = value.get("line_id") if isinstance(value, dict) else None
        if line not in self.plant.lines:
            raise ValueError(f"unknown line {line!r} (known: {', '.join(sorted(self.plant.lines))})")
        with self.lock:
            state = self.states.get(line)
            if state is None:
                state = self.states[line] = LineState(line)
            if MEMORY_TOPICS[record.topic] == "actions":
                machine = next((m.id for m in self.plant.lines[line].machines.values()
                                if m.entity_id == value["machine_entity_id"]), value.get("machine") or "")
                state.memory.on_action(value, machine)
            else:
                state.memory.on_feedback(value)
            self.dirty.add(line)

    def lagging_kinds(self) -> set[str]:
        """Input kinds whose topic still has unread records (their event time holds the watermarks back).

        A partition's next offset is the consumer's position; before the first record from it (just after a
        start or restart) the position is unknown, so the committed offset (or the low watermark) stands in, and
        an unknown high watermark is asked of the broker: unknown must hold windows back, never close them."""
        loop = self.loop
        if loop is None:
            return set()
        consumer = loop.consumer
        lagging: set[str] = set()
        prefix_len = len(self.settings.topic_prefix)
        try:
            for tp in consumer.position(consumer.assignment()):
                kind = KIND_BY_TOPIC.get(tp.topic[prefix_len:])
                if kind is None or kind in lagging:
                    continue
                key = (tp.topic, tp.partition)
                next_offset = tp.offset
                if next_offset < 0:
                    next_offset = self._start_offsets.get(key, -1)
                    if next_offset < 0:
                        committed = consumer.committed([TopicPartition(tp.topic, tp.partition)], timeout=5)[0].offset
                        if committed >= 0:
                            next_offset = committed
                        else:
                            # The low watermark from the last fetch; asking the broker (ListOffsets) is a round
                            # trip per partition, which took ~0.5 s each on Tansu and stalled the loop at start-up.
                            low, _ = consumer.get_watermark_offsets(tp, cached=True)
                            if low is None or low < 0:
                                low, _ = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                            next_offset = low
                        self._start_offsets[key] = next_offset
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if high is None or high < 0:
                    _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                if high > next_offset:
                    lagging.add(kind)
        except KafkaException as exc:
            event(log, "lag_unknown", level=logging.WARNING, error=str(exc))
            return set(KIND_BY_TOPIC.values())  # hold every window back rather than close one too early
        return lagging

    def advance(self, lagging: set[str]) -> None:
        dues: list[Due] = []
        with self.lock:
            for line, state in self.states.items():
                closed = self.engine.advance(state, lagging)
                if closed:
                    self.dirty.add(line)
                    dues += closed
        for due in dues:
            self._enqueue(due)

    def _enqueue(self, due: Due) -> None:
        TRIGGERS_FIRED.labels(due.trigger).inc()
        if due.trigger == "scheduled":
            WINDOWS_CLOSED.inc()
        self.due_since.setdefault(due.id, time.monotonic())
        if self._aio is not None and self._queue is not None:
            self._aio.call_soon_threadsafe(self._queue.put_nowait, due)
        else:
            self._backlog.append(due)

    # --- evaluation and publication (asyncio thread) -----------------------------------------------------

    async def _evaluate(self, due: Due) -> None:
        if due.id in self.published_ids:
            DUPLICATES_SKIPPED.inc()
            with self.lock:
                state = self.states.get(due.line_id)
                if state is not None:
                    self.engine.mark_done(state, due.id)
                    self.dirty.add(due.line_id)
            return
        window = LineWindow.from_dict(due.window)
        history = LineHistory.from_dict(due.history)
        with self.lock:
            state = self.states.get(due.line_id)
            memory = state.memory.memory(due.window_end) if state is not None else None
        outcome = await self.advisor.recommend(window, history, due.trigger, rec_id=due.id, memory=memory)
        while True:
            try:
                await self.publisher.send(RECOMMENDATIONS_TOPIC, due.line_id, outcome.record)
                break
            except Exception as exc:  # noqa: BLE001 - DeliveryError or a broker outage: retry, never drop
                event(log, "publish_failed_retrying", level=logging.WARNING, id=due.id, error=str(exc))
                await asyncio.sleep(1.0)
        PUBLISHED.inc()
        started = self.due_since.pop(due.id, None)
        if started is not None:
            elapsed = time.monotonic() - started
            CLOSE_TO_PUBLISH.labels(due.trigger).observe(elapsed)
            self.latencies.append((due.trigger, elapsed, outcome.model_latency_s))
            del self.latencies[:-10_000]
        with self.lock:
            if len(self.published_ids) > 100_000:  # bounded: the states' `done` lists keep the recent ones
                self.published_ids = {i for state in self.states.values() for i in state.done}
            self.published_ids.add(due.id)
            state = self.states.get(due.line_id)
            if state is not None:
                self.engine.mark_done(state, due.id)
                state.memory.note_recommendation(due.id, outcome.analysis)
                self.dirty.add(due.line_id)
            self.recent.setdefault(due.line_id, deque(maxlen=20)).append(outcome.record)
            self.outcomes.append(outcome)
            del self.outcomes[:-200]
        event(log, "recommendation_published", id=due.id, line=due.line_id, trigger=due.trigger,
              severity=outcome.record["severity"], category=outcome.record["category"],
              fallback=outcome.fallback)

    async def _evaluator(self) -> None:
        assert self._queue is not None
        while True:
            due = await self._queue.get()
            try:
                await self._evaluate(due)
            except Exception as exc:  # noqa: BLE001 - one bad evaluation must not stop the others
                event(log, "evaluation_failed", level=logging.ERROR, id=due.id, error=f"{type(exc).__name__}: {exc}")

    async def _ticker(self) -> None:
        """Checkpoint while the input is idle, and close the windows of lines that went completely quiet."""
        while True:
            await asyncio.sleep(min(1.0, self.settings.checkpoint_interval_s))
            now = time.monotonic()
            dues: list[Due] = []
            with self.lock:
                for line, state in self.states.items():
                    idle_ms = int((now - self.last_record_wall.get(line, now)) * 1000)
                    closed = self.engine.close_idle(state, idle_ms)
                    if closed:
                        self.dirty.add(line)
                        dues += closed
                dirty = bool(self.dirty)
            for due in dues:
                self._enqueue(due)
            if dirty:  # the loop moves its stored offsets forward by itself when it is idle
                await asyncio.to_thread(self.checkpoint)

    async def _background(self, app: web.Application) -> AsyncIterator[None]:
        self._aio = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        for due in self._backlog:
            self._queue.put_nowait(due)
        self._backlog.clear()
        tasks = [asyncio.create_task(self._evaluator()), asyncio.create_task(self._ticker())]
        yield
        for task in tasks:
            task.cancel()
        self._aio = None

    def pending_evaluations(self) -> int:
        queued = self._queue.qsize() if self._queue is not None else len(self._backlog)
        with self.lock:
            return max(queued, sum(len(s.pending) for s in self.states.values()))

    # --- HTTP ----------------------------------------------------------------------------------------------

    def create_app(self) -> web.Application:
        from services.advisor.chat import add_chat_routes

        app = create_app(self.health)
        app.cleanup_ctx.append(self._background)
        add_chat_routes(app, self)
        return app

    # --- run -----------------------------------------------------------------------------------------------

    def start_http(self) -> None:
        self.http = BackgroundHttpServer(self.create_app, self.settings.http_host, self.settings.http_port)
        self.http.start()

    def run(self, install_signal_handlers: bool = True) -> None:
        self.ensure_changelog_topic()
        self.start_http()
        self.restore()
        self.loop = ConsumerLoop(self.settings, self.settings.group_id, [*KIND_BY_TOPIC, *MEMORY_TOPICS], self.handle,
                                 sink=self.sink, batch_size=self.settings.batch_size, health=self.health)
        if install_signal_handlers:
            self.loop.install_signal_handlers()
        try:
            self.loop.run()
        finally:
            self.shutdown()

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()

    def shutdown(self) -> None:
        # Let queued evaluations finish (bounded), then stop the HTTP thread and flush.
        deadline = time.monotonic() + 30
        while self.pending_evaluations() and time.monotonic() < deadline and self._aio is not None:
            time.sleep(0.1)
        self.checkpoint()
        if self.http is not None:
            self.http.stop()
        self.publisher.close(10)
        self.changelog_producer.close(10)
        event(log, "advisor_stopped")


def main(argv: list[str] | None = None) -> int:
    settings = start_service(AdvisorSettings)  # exits 2 naming the variable when a setting is invalid
    try:
        service = AdvisorService(settings)
    except ValueError as exc:  # an unknown model alias, a malformed alias table
        print(f"advisor: invalid settings: {exc}", file=sys.stderr)
        return 2
    tune_gc()
    service.run()
    return 0
