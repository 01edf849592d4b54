"""The simulated clock runs faster than real time, paced, and never stalls when the host is slow."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from simulator.clock import SimClock, iso


def test_iso_timestamps_are_utc_with_milliseconds():
    clock = SimClock(datetime(2026, 1, 5, 6, 0, tzinfo=UTC))
    clock.advance(90.5)
    assert clock.iso() == "2026-01-05T06:01:30.500Z"
    assert clock.epoch_ms() == int(datetime(2026, 1, 5, 6, 1, 30, 500000, tzinfo=UTC).timestamp() * 1000)
    assert iso(datetime(2026, 1, 5, 7, 0, tzinfo=UTC)) == "2026-01-05T07:00:00.000Z"
    with pytest.raises(ValueError, match="timezone"):
        SimClock(datetime(2026, 1, 5))


async def _live(clock: SimClock, sim_seconds: int) -> float:
    started = time.monotonic()
    for _ in range(sim_seconds):
        clock.advance(1.0)
        await clock.pace()
    return time.monotonic() - started


def test_speed_paces_simulated_time_against_the_wall_clock():
    elapsed = asyncio.run(_live(SimClock(speed=100), 50))  # 50 simulated seconds at 100x: half a second
    assert 0.4 < elapsed < 1.5
    unbounded = asyncio.run(_live(SimClock(speed=0), 5000))
    assert unbounded < 0.5
