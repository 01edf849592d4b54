"""The advisor's evaluations: a window closed (or an immediate trigger fired) -> a recommendation on Kafka.

Runs on the asyncio event loop, apart from consumption, so a slow model never stalls the consumer loop. An
evaluation stays `pending` in the line's state until its recommendation is acknowledged, so a crash between the
two re-runs it with the same deterministic id; an id already published is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from lineguard import telemetry, topics
from lineguard.kafka import Producer
from lineguard.logs import event, get_logger
from services.advisor.engine import Due
from services.advisor.recommend import Advisor, Outcome
from services.advisor.state import AdvisorState
from services.advisor.window import LineHistory, LineWindow

log = get_logger(__name__)
SERVICE = "advisor"
RECOMMENDATIONS_TOPIC = topics.RECOMMENDATIONS

WINDOWS_CLOSED = telemetry.counter(SERVICE, "windows_closed", "Windows closed and evaluated.")
TRIGGERS_FIRED = telemetry.counter(SERVICE, "triggers", "Evaluations that became due, by trigger.", ["trigger"])
PUBLISHED = telemetry.counter(SERVICE, "recommendations_published", "Recommendations acknowledged by Kafka.")
DUPLICATES_SKIPPED = telemetry.counter(SERVICE, "duplicates_skipped",
                                       "Evaluations skipped because their id was already published.")
NOT_OWNED = telemetry.counter(SERVICE, "evaluations_not_owned",
                              "Evaluations skipped because their line's partition moved to another worker.")
CLOSE_TO_PUBLISH = telemetry.histogram(SERVICE, "close_to_publish_seconds",
                                       "Wall time from an evaluation becoming due to its recommendation being "
                                       "acknowledged (model time included).", ["trigger"])


class Evaluator:
    def __init__(self, advisor: Advisor, state: AdvisorState, publisher: Producer) -> None:
        self.advisor = advisor
        self.state = state
        self.publisher = publisher
        self.due_since: dict[str, float] = {}
        self.outcomes: list[Outcome] = []  # kept for tests and the benchmark (bounded)
        self.latencies: list[tuple[str, float, float]] = []  # (trigger, due -> published s, model s)
        self._aio: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Due] | None = None
        self._backlog: list[Due] = []
        self.in_flight: Due | None = None  # the evaluation running now (a revoke waits for it)

    def enqueue(self, due: Due) -> None:
        """From any thread: an evaluation to run (queued until the event loop runs)."""
        TRIGGERS_FIRED.labels(due.trigger).inc()
        if due.trigger == "scheduled":
            WINDOWS_CLOSED.inc()
        self.due_since.setdefault(due.id, time.monotonic())
        if self._aio is not None and self._queue is not None:
            self._aio.call_soon_threadsafe(self._queue.put_nowait, due)
        else:
            self._backlog.append(due)

    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else len(self._backlog)

    async def evaluate(self, due: Due) -> None:
        if not self.state.owns(due.line_id):
            # Its partition moved to another worker, which restores the due evaluation from the changelog.
            NOT_OWNED.inc()
            self.due_since.pop(due.id, None)
            return
        if self.state.already_published(due):
            DUPLICATES_SKIPPED.inc()
            return
        window = LineWindow.from_dict(due.window)
        history = LineHistory.from_dict(due.history)
        memory = self.state.memory_for(due.line_id, due.window_end)
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
        self.state.published(due, outcome.record, outcome.analysis)
        self.outcomes.append(outcome)
        del self.outcomes[:-200]
        event(log, "recommendation_published", id=due.id, line=due.line_id, trigger=due.trigger,
              severity=outcome.record["severity"], category=outcome.record["category"],
              fallback=outcome.fallback)

    async def run(self) -> None:
        """Evaluate what is queued, one at a time, until cancelled."""
        self._queue = asyncio.Queue()
        self._aio = asyncio.get_running_loop()
        while self._backlog:  # after _aio is set nothing more lands here, so nothing is lost
            self._queue.put_nowait(self._backlog.pop(0))
        try:
            while True:
                due = await self._queue.get()
                self.in_flight = due
                try:
                    await self.evaluate(due)
                except Exception as exc:  # noqa: BLE001 - one bad evaluation must not stop the others
                    event(log, "evaluation_failed", level=logging.ERROR, id=due.id,
                          error=f"{type(exc).__name__}: {exc}")
                finally:
                    self.in_flight = None
        finally:
            self._aio = None

    def stats(self) -> dict[str, Any]:
        return {"queued": self.queued(), "published": len(self.outcomes)}
