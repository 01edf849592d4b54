"""The simulated clock: simulated seconds since a start instant, running `speed` times faster than real time."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta


class SimClock:
    """Simulated time advances only when the simulation steps; `pace` keeps it `speed` x ahead of the wall clock.

    speed <= 0 means "as fast as the CPU allows" (tests); speed 1 is real time; speed 10 lives ten minutes in one.
    """

    def __init__(self, start: datetime | None = None, speed: float = 1.0) -> None:
        start = start or datetime.now(UTC).replace(microsecond=0)
        if start.tzinfo is None:
            raise ValueError("the simulation start must be timezone-aware (UTC)")
        self.start = start.astimezone(UTC)
        self.speed = speed
        self.seconds = 0.0
        self._real_origin: float | None = None
        self._sim_origin = 0.0

    def advance(self, dt: float) -> None:
        self.seconds += dt

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.seconds)

    def at(self, sim_seconds: float) -> datetime:
        return self.start + timedelta(seconds=sim_seconds)

    def iso(self, sim_seconds: float | None = None) -> str:
        return iso(self.at(self.seconds if sim_seconds is None else sim_seconds))

    def epoch_ms(self, sim_seconds: float | None = None) -> int:
        return int(round(self.at(self.seconds if sim_seconds is None else sim_seconds).timestamp() * 1000))

    def set_speed(self, speed: float) -> None:
        self.speed = speed
        self._real_origin = None  # re-anchor so a speed change does not cause a burst or a stall

    async def pace(self) -> None:
        """Sleep until the wall clock catches up with simulated time (or just yield when unbounded)."""
        if self.speed <= 0:
            await asyncio.sleep(0)
            return
        now = time.monotonic()
        if self._real_origin is None:
            self._real_origin, self._sim_origin = now, self.seconds
        due = self._real_origin + (self.seconds - self._sim_origin) / self.speed
        if due > now:
            await asyncio.sleep(due - now)
        else:
            if now - due > 5.0:  # far behind (a slow host): re-anchor instead of racing to catch up
                self._real_origin, self._sim_origin = now, self.seconds
            await asyncio.sleep(0)


def iso(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a Z, the form every emitter uses."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
