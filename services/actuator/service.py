"""The actuator process: recommendations.v1 -> actions (policy, approvals, control API) -> actions.v1.

Started by `lineguard.service.run_service`: the consumer loop reads recommendations.v1 on its own thread; the
approvals API, the decisions and the control API calls run on the service's asyncio event loop. For each
recommendation the loop's handler waits until the `proposed` record of each new action is acknowledged by Kafka,
so the recommendation's offset is committed only once its actions are on the audit trail; deciding and executing
them goes on asynchronously (the loop never waits for the controller), and an action a crash left between two
steps is resumed from the ledger at start.

Before the loop starts and the service reports ready, the ledger is rebuilt by reading the compacted actions.v1
to its end (`restore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from lineguard.kafka import Record, read_topic
from lineguard.logs import event, get_logger
from lineguard.plant import PlantModelError, load_plant
from lineguard.service import Runtime, Service, StartupError, run_service
from lineguard.topics import ACTIONS, RECOMMENDATIONS
from services.actuator.actions import Actuator
from services.actuator.api import Callers, add_approval_routes
from services.actuator.control import ControlClient
from services.actuator.policy import PolicyError, load_policy
from services.actuator.settings import ActuatorSettings

log = get_logger(__name__)
INTAKE_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 12.0


class ActuatorService:
    """The actuator's parts, wired to one runtime (`build` returns them as a `Service`)."""

    def __init__(self, rt: Runtime[ActuatorSettings]) -> None:
        settings = rt.settings
        self.rt = rt
        self.settings = settings
        try:
            self.plant = load_plant(settings.plant_path())
            self.policy = load_policy(settings.actuation_policy_file, self.plant)
        except (PolicyError, PlantModelError) as exc:
            raise StartupError(f"invalid actuation policy: {exc}") from exc
        self.publisher = rt.producer()
        self.control = ControlClient(self._controller_url, settings.control_api_token,
                                     settings.control_api_timeout_s, settings.control_api_retries,
                                     settings.control_api_backoff_s)
        self.actuator = Actuator(self.plant, self.policy, self.control, self._publish,
                                 dry_run=settings.actuator_dry_run,
                                 requested_by=f"lineguard-actuator/{settings.instance_id}")
        self.callers = Callers(settings.operators(), settings.delegates())
        self.restored = False
        self._aio = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task] = set()

    def _controller_url(self, line_id: str) -> str | None:
        if self.settings.control_api_url:
            return self.settings.control_api_url
        line = self.plant.lines.get(line_id)
        return line.controller_api if line else None

    # --- audit trail -----------------------------------------------------------------------------------------

    async def _publish(self, record: dict[str, Any]) -> None:
        """Produce one audit record and wait for Kafka's acknowledgement; retry until it is there (the next step
        of an action never happens before its audit record is durable)."""
        delay = 0.2
        while True:
            try:
                await self.publisher.send(ACTIONS, record["action_id"], record)
                return
            except Exception as exc:  # noqa: BLE001 - DeliveryError or a broker outage: retry, never skip
                event(log, "audit_record_retrying", level=logging.WARNING, action_id=record["action_id"],
                      status=record["status"], error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def restore(self) -> None:
        """The ledger from the compacted actions.v1, read to its end (a worker thread, before the loop starts)."""
        started = time.monotonic()
        count = self.actuator.restore(r.value for r in read_topic(self.settings, ACTIONS))
        self.restored = True
        event(log, "ledger_restored", actions=count, unfinished=len(self.actuator.unfinished()),
              pending=len(self.actuator.pending()), seconds=round(time.monotonic() - started, 2))

    # --- the consumer loop's handler (its own thread) --------------------------------------------------------

    def handle(self, record: Record) -> None:
        recommendation = record.value
        if not isinstance(recommendation, dict) or not recommendation.get("proposed_actions"):
            return None
        future = asyncio.run_coroutine_threadsafe(self._intake(recommendation), self._aio)
        future.result(timeout=INTAKE_TIMEOUT_S)
        return None

    async def _intake(self, recommendation: dict[str, Any]) -> None:
        for proposed in self.actuator.proposals(recommendation):
            if await self.actuator.record(proposed):
                self._spawn(self.actuator.process(proposed["action_id"]))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            event(log, "action_task_failed", level=logging.ERROR, error=f"{type(exc).__name__}: {exc}")

    # --- background and shutdown (event loop) ----------------------------------------------------------------

    async def expiry(self) -> None:
        """Resume what a crash left between steps, then expire pending approvals as their time comes."""
        for aid in self.actuator.unfinished():
            event(log, "action_resumed", action_id=aid, status=self.actuator.ledger[aid]["status"])
            self._spawn(self.actuator.process(aid))
        stopping = self.rt.stopping
        while not stopping.is_set():
            try:
                await self.actuator.expire_due()
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                event(log, "expiry_failed", level=logging.WARNING, error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=1.0)

    async def on_stop(self) -> None:
        """Let running executions finish (bounded) before the producer is closed."""
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
        await self.actuator.drain(3)
        await self.control.close()
        event(log, "actuator_stopped", unfinished=len(self.actuator.unfinished()))

    def routes(self, app: web.Application) -> None:
        add_approval_routes(app, self.actuator, self.callers, self.settings.approve_wait_s,
                            available=lambda: self.restored)


def build(rt: Runtime[ActuatorSettings]) -> Service:
    service = ActuatorService(rt)
    loop = rt.consumer_loop(rt.settings.group_id, [RECOMMENDATIONS], service.handle, producer=service.publisher)
    return Service(loop=loop, routes=service.routes, tasks=[service.expiry], restore=service.restore,
                   on_stop=service.on_stop, stop_timeout_s=3.0)


def main() -> None:
    run_service(ActuatorSettings, build)
