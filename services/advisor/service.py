"""The advisor process: unified line topics -> windows per line -> recommendations.v1, plus health and chat.

Three parts, each in its own module:
- state (`state.py`): the windows, triggers and memory of every line, folded on the shared `ConsumerLoop`'s
  thread and checkpointed to a compacted changelog; its sink holds each input offset back until the state that
  folded it is in the changelog, so a worker killed with SIGKILL restarts from its last checkpoint;
- evaluation (`evaluation.py`): closed windows and immediate triggers -> analysis, model, validation ->
  recommendations.v1, on the asyncio event loop, so a slow model never stalls consumption;
- HTTP (`chat.py`): the chat and recommendations API beside health and metrics.

This module wires them: the consumer loop's handler and its after-batch step (the watermark: which inputs still
lag), recovery on each partition assignment (the changelog partitions of the assigned line partitions, and the
tail of recommendations.v1 on them, so an id published just before a crash is not published again), dropping the
lines of revoked partitions, and the ticker that checkpoints an idle input and closes the windows of a silent line.
Several workers in one group therefore each hold, and restore, only the lines of their own partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaException

from lineguard import topics
from lineguard.catalog import load_catalog
from lineguard.health import create_app
from lineguard.kafka import ConsumerLoop, Record, Tail, new_admin, read_topic
from lineguard.kafka.changelog import ensure_changelog
from lineguard.logs import event, get_logger
from lineguard.plant import PlantModel, load_plant
from lineguard.service import Runtime, Service, StartupError, run_service, serve
from services.advisor.engine import EngineConfig, WindowEngine
from services.advisor.evaluation import RECOMMENDATIONS_TOPIC, Evaluator
from services.advisor.models import ModelError, ModelProvider, create_provider, parse_aliases
from services.advisor.recommend import Advisor
from services.advisor.retrieval import Retriever
from services.advisor.settings import AdvisorSettings
from services.advisor.state import (
    KIND_BY_TOPIC,
    MEMORY_TOPICS,
    AdvisorState,
    ChangelogSink,
    decode_state,
    encode_state,
)

__all__ = ["AdvisorService", "KIND_BY_TOPIC", "MEMORY_TOPICS", "RECOMMENDATIONS_TOPIC", "build", "build_provider",
           "decode_state", "encode_state", "main"]

log = get_logger(__name__)


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


class AdvisorService:
    def __init__(self, settings: AdvisorSettings, provider: ModelProvider | None = None,
                 plant: PlantModel | None = None, runtime: Runtime[AdvisorSettings] | None = None) -> None:
        self.settings = settings
        self.rt = runtime or Runtime(settings)
        self.health = self.rt.health
        self.plant = plant or load_plant(settings.plant_path())
        self.retriever = Retriever.from_folder(settings.docs_dir)
        self.provider = provider or build_provider(settings)
        self.advisor = Advisor(self.plant, self.retriever, self.provider, model_on_normal=settings.model_on_normal,
                               max_tokens=settings.model_max_tokens)
        self.engine = WindowEngine(EngineConfig(
            window_ms=int(settings.window_s * 1000), grace_ms=int(settings.window_grace_s * 1000),
            cooldown_ms=int(settings.trigger_cooldown_s * 1000), idle_close_ms=int(settings.idle_close_s * 1000)))
        self.changelog_producer = self.rt.producer()
        self.publisher = self.rt.producer()
        self.state = AdvisorState(self.plant, self.engine, self.changelog_producer, settings.changelog_topic,
                                  source_idle_s=settings.source_idle_s)
        self.evaluator = Evaluator(self.advisor, self.state, self.publisher)
        self.sink = ChangelogSink(self.state, settings.checkpoint_interval_s, advance=self.advance_watermarks,
                                  assigned=self.on_assigned, revoked=self.on_revoked)
        self.recommendations_copartitioned = True
        self.loop: ConsumerLoop | None = None

    # The parts, as the chat routes, the tests and the benchmark read them.
    @property
    def lock(self) -> Any:
        return self.state.lock

    @property
    def states(self) -> dict[str, Any]:
        return self.state.states

    @property
    def recent(self) -> dict[str, Any]:
        return self.state.recent

    @property
    def folded(self) -> int:
        return self.state.folded

    @property
    def outcomes(self) -> list[Any]:
        return self.evaluator.outcomes

    @property
    def latencies(self) -> list[tuple[str, float, float]]:
        return self.evaluator.latencies

    def pending_evaluations(self) -> int:
        return max(self.evaluator.queued(), self.state.pending())

    # --- recovery ------------------------------------------------------------------------------------------

    def ensure_changelog_topic(self) -> None:
        """Create the changelog co-partitioned with the line topics (key: line id), or check that it is: a
        worker restores the changelog partitions numbered as its input partitions, so the counts must match."""
        catalog = load_catalog(self.settings.schemas_dir)
        admin = new_admin(self.settings)
        existing = admin.list_topics(timeout=10).topics
        counts = {}
        for topic in (*KIND_BY_TOPIC, RECOMMENDATIONS_TOPIC):
            info = existing.get(self.settings.topic(topic))
            counts[topic] = len(info.partitions) if info is not None and info.partitions else catalog[topic].partitions
        partitions = counts[topics.LINE_OBSERVATIONS]
        if len({counts[t] for t in KIND_BY_TOPIC}) != 1:
            raise ValueError(f"the line topics must have one partition count (co-partitioned by line): {counts}")
        self.state.partitions = partitions
        self.recommendations_copartitioned = counts[RECOMMENDATIONS_TOPIC] == partitions
        ensure_changelog(self.settings, self.settings.changelog_topic, partitions, "the line topics", admin,
                         existing)

    def _read_topic(self, topic: str, tail: int | None = None) -> list[tuple[bytes | None, bytes | None]]:
        """Every record of a topic (or the last `tail` of each partition) as (key, value) bytes."""
        start: Any = Tail(tail) if tail is not None else "beginning"
        return [(r.key, r.value) for r in read_topic(self.settings, topic, start=start, decode=False)]

    def restore(self) -> int:
        """Recover every line's state from the changelog and the ids already published; returns lines restored."""
        published: set[str] = set()
        serde = self.publisher.serde
        for _, value in self._read_topic(RECOMMENDATIONS_TOPIC, tail=2000):
            if value is None:
                continue
            try:
                published.add(serde.decode(RECOMMENDATIONS_TOPIC, value)["id"])
            except Exception:  # noqa: BLE001 - a foreign record on the topic is not ours to judge
                continue
        before = set(self.state.states)
        for due in self.state.restore(self._read_topic(self.settings.changelog_topic), published):
            self.evaluator.enqueue(due)
        return len(set(self.state.states) - before) or len(self.state.states)

    def on_assigned(self, partitions: set[int]) -> None:
        """The loop's thread, before any record of `partitions`: restore the lines of their changelog partitions."""
        started = time.monotonic()
        self.state.assign(partitions)
        recs_partitions = partitions if self.recommendations_copartitioned else None
        published: set[str] = set()
        serde = self.publisher.serde
        for record in read_topic(self.settings, RECOMMENDATIONS_TOPIC, start=Tail(2000), decode=False,
                                 partitions=recs_partitions):
            if record.value is None:
                continue
            try:
                published.add(serde.decode(RECOMMENDATIONS_TOPIC, record.value)["id"])
            except Exception:  # noqa: BLE001 - a foreign record on the topic is not ours to judge
                continue
        before = self.state.restored_records
        changelog = [(r.key, r.value, r.partition) for r in
                     read_topic(self.settings, self.settings.changelog_topic, decode=False, partitions=partitions)]
        for due in self.state.restore(changelog, published):
            self.evaluator.enqueue(due)
        event(log, "partitions_restored", partitions=sorted(partitions),
              changelog_records=self.state.restored_records - before, seconds=round(time.monotonic() - started, 3))

    def on_revoked(self, partitions: set[int]) -> None:
        """The loop's thread, after its checkpoint: stop evaluating the lines of `partitions`, let an evaluation
        of theirs in flight finish (its id then reaches the changelog), checkpoint, and forget them."""
        lines = set(self.state.release(partitions))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            due = self.evaluator.in_flight
            if due is None or due.line_id not in lines:
                break
            time.sleep(0.02)
        self.sink.flush()
        self.state.drop(lines)
        event(log, "partitions_dropped", partitions=sorted(partitions), lines=len(lines))

    def checkpoint(self) -> bool:
        return self.sink.flush()

    # --- the consumer loop ---------------------------------------------------------------------------------

    def handle(self, record: Record) -> None:
        for due in self.state.fold(record.topic, record.value):
            self.evaluator.enqueue(due)

    def advance_watermarks(self) -> None:
        """After each batch and on idle polls (the loop's thread): move the watermarks (held back by inputs that
        still lag or still move) and close windows."""
        for due in self.state.advance(self.lagging_kinds()):
            self.evaluator.enqueue(due)

    def lagging_kinds(self) -> set[str]:
        """Input kinds whose topic still has unread records (their event time holds the watermarks back). The
        loop's lag bookkeeping answers; unknown lag holds every window back rather than close one too early."""
        loop = self.loop
        if loop is None:
            return set()
        try:
            lag = loop.partition_lag()
        except KafkaException as exc:
            event(log, "lag_unknown", level=logging.WARNING, error=str(exc))
            return set(KIND_BY_TOPIC.values())
        return {KIND_BY_TOPIC[topic] for (topic, _), behind in lag.items() if behind > 0 and topic in KIND_BY_TOPIC}

    # --- background tasks (asyncio) ------------------------------------------------------------------------

    async def evaluations(self) -> None:
        """Evaluate what becomes due; once the service stops, finish what is queued (bounded), then return."""
        runner = asyncio.create_task(self.evaluator.run())
        await self.rt.stopping.wait()
        deadline = time.monotonic() + 30
        while self.evaluator.queued() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    async def ticker(self) -> None:
        """Checkpoint while the input is idle, and close the windows of lines that went completely quiet."""
        while not self.rt.stopping.is_set():
            await asyncio.sleep(min(1.0, self.settings.checkpoint_interval_s))
            for due in self.state.close_idle():
                self.evaluator.enqueue(due)
            with self.state.lock:
                dirty = bool(self.state.dirty)
            if dirty:  # the loop moves its stored offsets forward by itself when it is idle
                await asyncio.to_thread(self.checkpoint)

    # --- HTTP ----------------------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        from services.advisor.chat import add_chat_routes

        add_chat_routes(app, self)

    def create_app(self) -> web.Application:
        """Health, metrics and the chat API without the consumer (tests serve it alone)."""
        app = create_app(self.health)
        self.add_routes(app)
        return app

    # --- run: one start-up (lineguard.service) -------------------------------------------------------------

    def service(self) -> Service:
        """What the runtime runs: the consumer loop, the API, the evaluations and the ticker, recovery first."""
        if not self.rt.check_only:  # check mode (--check-config) reaches no broker
            self.ensure_changelog_topic()
        # Bad input (an unknown line, a record missing its fields) is dead-lettered; anything else is a bug.
        self.loop = self.rt.consumer_loop(self.settings.group_id, [*KIND_BY_TOPIC, *MEMORY_TOPICS], self.handle,
                                          sink=self.sink, batch_size=self.settings.batch_size,
                                          dead_letter_on=(ValueError, KeyError, TypeError))
        # No restore before the loop: each assignment restores its own partitions (on_assigned), before the loop
        # reports ready.
        return Service(loop=self.loop, routes=self.add_routes, tasks=[self.evaluations, self.ticker],
                       on_stop=self.checkpoint, stop_timeout_s=35.0)

    def run(self, install_signal_handlers: bool = True) -> int:
        """Run in this thread until stopped (the benchmark and tests; the process uses `main`)."""
        return asyncio.run(serve(self.rt, self.service(), install_signals=install_signal_handlers))

    def stop(self) -> None:
        self.rt.request_stop()


def build(rt: Runtime[AdvisorSettings]) -> Service:
    try:
        return AdvisorService(rt.settings, runtime=rt).service()
    except ValueError as exc:  # an unknown model alias, a malformed alias table: exit 2
        raise StartupError(f"advisor: invalid settings: {exc}") from exc


def main() -> None:
    run_service(AdvisorSettings, build)
