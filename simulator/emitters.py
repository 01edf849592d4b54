"""The emitter interface and the runner that drives the line and its emitters on the simulated clock."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

from lineguard.logs import event
from simulator.model import Cookie, CookieLine, StepEvents

log = logging.getLogger("simulator.runner")

CookieHook = Callable[[CookieLine, Cookie], Awaitable[None]]


class Emitter(Protocol):
    """One protocol the simulated line speaks. Emitters never stop the line: they log and count failures."""

    name: str

    async def start(self, sim: CookieLine) -> None: ...

    async def on_tick(self, sim: CookieLine, events: StepEvents) -> None: ...

    async def stop(self, sim: CookieLine) -> None: ...


class CookieHooks:
    """Calls every hook for each cookie that passes under the detector (the camera plugs in here).

    Hooks run as tasks, at most `max_in_flight` at once; when they fall behind, cookies are skipped and counted
    rather than letting the simulated clock stall. Several lines' hooks may share `in_flight` (one set of tasks),
    so the bound is on all of them together: N lines' cameras post to one vision service at most
    `max_in_flight` images at a time, not N times that.
    """

    name = "cookie-hooks"

    def __init__(self, hooks: list[CookieHook], max_in_flight: int = 8,
                 in_flight: set[asyncio.Task] | None = None) -> None:
        self.hooks = hooks
        self.max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task] = in_flight if in_flight is not None else set()
        self.stats: Counter[str] = Counter()

    async def start(self, sim: CookieLine) -> None:
        return None

    async def on_tick(self, sim: CookieLine, events: StepEvents) -> None:
        for cookie in events.detected:
            for hook in self.hooks:
                if len(self._tasks) >= self.max_in_flight:
                    self.stats["skipped"] += 1
                    continue
                task = asyncio.create_task(self._run(hook, sim, cookie))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, hook: CookieHook, sim: CookieLine, cookie: Cookie) -> None:
        try:
            await hook(sim, cookie)
            self.stats["sent"] += 1
        except Exception as exc:  # a failing consumer never stops the line
            self.stats["failed"] += 1
            if self.stats["failed"] <= 5 or self.stats["failed"] % 100 == 0:
                event(log, "cookie_hook_failed", logging.WARNING, item_id=cookie.item_id, error=str(exc),
                      failures=self.stats["failed"])

    async def stop(self, sim: CookieLine) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)


def camera_hook(intake_url: str, sim: CookieLine, size: int = 256,
                token: str | None = None, station: str = "detector") -> tuple[CookieHook, object] | None:
    """A hook that renders and posts each detected cookie's image, when the camera module is available;
    `station`: the plant model's inspecting machine the images come from."""
    try:
        from simulator.camera import CameraEmitter  # written alongside; optional until it exists
    except ImportError as exc:
        event(log, "camera_unavailable", logging.WARNING, error=str(exc))
        return None
    camera = CameraEmitter(intake_url, rng=sim.camera_rng, size=size, token=token)

    async def emit(line: CookieLine, cookie: Cookie) -> None:
        await camera.emit(line.line.id, station, cookie.item_id, line.clock.iso(), cookie.defects)

    return emit, camera


class Runner:
    """Steps the line on the simulated clock and hands every tick to the emitters."""

    def __init__(self, sim: CookieLine, emitters: list[Emitter], tick_s: float = 1.0,
                 progress_every_s: float = 60.0) -> None:
        self.sim = sim
        self.emitters = emitters
        self.tick_s = tick_s
        self.progress_every_s = progress_every_s
        self.stop_event = asyncio.Event()
        self._defects_since_progress: Counter[str] = Counter()
        self._exited_since_progress = 0

    async def start(self) -> None:
        for emitter in self.emitters:
            await emitter.start(self.sim)

    async def run(self, duration_s: float | None = None) -> None:
        """Run until `duration_s` simulated seconds have passed (None: until `stop_event` is set)."""
        sim = self.sim
        next_progress = sim.now_s + self.progress_every_s
        while not self.stop_event.is_set() and (duration_s is None or sim.now_s + 1e-9 < duration_s):
            events = sim.step(self.tick_s)
            for kind, fault in events.fault_changes:
                event(log, kind, sim_time=sim.clock.iso(), fault=fault.as_dict())
            for cookie in events.exited:
                self._exited_since_progress += 1
                self._defects_since_progress.update(cookie.defects)
            for emitter in self.emitters:
                try:
                    await emitter.on_tick(sim, events)
                except Exception as exc:  # an emitter bug must not kill the plant
                    event(log, "emitter_failed", logging.ERROR, emitter=emitter.name, error=repr(exc))
            sim.truth_log.flush()
            if sim.now_s >= next_progress:
                next_progress += self.progress_every_s
                self._progress()
            await sim.clock.pace()

    def _progress(self) -> None:
        sim = self.sim
        exited = self._exited_since_progress
        event(log, "progress", sim_time=sim.clock.iso(), sim_seconds=round(sim.now_s),
              cookies=exited, defect_rates={d: round(n / exited, 3) for d, n in self._defects_since_progress.items()}
              if exited else {}, counters=dict(sim.counters),
              states={m: r.state for m, r in sim.machines.items() if r.state != "running"},
              active_faults=[f.type for f in sim.faults if f.active(sim.now_s)])
        self._defects_since_progress.clear()
        self._exited_since_progress = 0

    async def stop(self) -> None:
        for emitter in reversed(self.emitters):
            try:
                await emitter.stop(self.sim)
            except Exception as exc:
                event(log, "emitter_stop_failed", logging.WARNING, emitter=emitter.name, error=repr(exc))
