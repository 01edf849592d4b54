"""A slow state restore keeps /livez up while it makes progress, and only a stuck one fails it (issue 17)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from dataclasses import dataclass

from lineguard.health import Health, current_restore
from lineguard.service import EXIT_OK, Runtime, Service, serve
from lineguard.settings import Settings, env_field


@dataclass(frozen=True)
class RestoreSettings(Settings):
    service_name: str = env_field("restorer")
    http_host: str = env_field("127.0.0.1")
    http_port: int = env_field(0)
    liveness_timeout_s: float = env_field(0.3)
    restore_stall_timeout_s: float = env_field(1.0)


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class FakeSlowRestore:
    """A restore reading a changelog of 3 partitions a batch at a time; the test decides when it moves, stalls
    and ends, so nothing depends on how fast the machine is."""

    def __init__(self) -> None:
        self.moving = threading.Event()
        self.finish = threading.Event()
        self.records = 0

    def __call__(self) -> None:
        restore = current_restore()
        assert restore is not None, "serve() runs the restore inside Health.restoring"
        done = 0
        while not self.finish.is_set():
            if self.moving.wait(0.01):
                self.records += 10
                done = min(3, self.records // 500)
                restore.update("advisor.windows.changelog.v1", self.records, done, 3)
            time.sleep(0.01)
        restore.update("advisor.windows.changelog.v1", self.records, 3, 3)


def test_a_slow_restore_stays_alive_while_it_reads_and_a_stuck_one_fails_livez() -> None:
    restore = FakeSlowRestore()
    samples: list[tuple[int, dict, int, dict]] = []

    async def scenario() -> int:
        rt = Runtime(RestoreSettings.from_env(environ={}))
        running = asyncio.create_task(serve(rt, Service(restore=restore), install_signals=False))

        def probe() -> tuple[int, dict, int, dict]:
            return (*_get(rt.port, "/livez"), *_get(rt.port, "/readyz"))

        def check() -> None:
            _wait(lambda: rt.port is not None)
            restore.moving.set()
            # The first batch read (on a loaded machine the restore's thread may not have run yet)
            _wait(lambda: (probe()[3].get("restore") or [{}])[0].get("records_read", 0) > 0)
            # Moving: alive for well over liveness_timeout_s (0.3 s) and over the stall timeout (1 s) in all.
            started = time.monotonic()
            while time.monotonic() - started < 2.5:
                samples.append(probe())
                time.sleep(0.1)
            # Stuck: no record for longer than restore_stall_timeout_s -> /livez 503 (the pod is restarted).
            restore.moving.clear()
            _wait(lambda: probe()[0] == 503)
            samples.append(probe())
            # It moves again, then ends: alive, then ready.
            restore.moving.set()
            _wait(lambda: probe()[0] == 200)
            restore.finish.set()
            _wait(lambda: probe()[2] == 200)
            samples.append(probe())

        await asyncio.to_thread(check)
        rt.request_stop()
        return await running

    assert asyncio.run(scenario()) == EXIT_OK
    moving, stuck, finished = samples[:-2], samples[-2], samples[-1]
    assert len(moving) >= 10
    for live, live_body, ready, ready_body in moving:
        assert live == 200, live_body
        assert ready == 503 and ready_body["why_not_ready"] == "restoring state"
    read = [s[3]["restore"][0]["records_read"] for s in moving]
    assert read == sorted(read) and read[-1] > read[0] > 0, "readyz shows the records read going up"
    assert {s[3]["restore"][0]["partitions_total"] for s in moving} == {3}
    assert moving[-1][3]["restore"][0]["partitions_done"] >= 1
    live, live_body, ready, _ = stuck
    assert live == 503 and live_body["restore"][0]["seconds_since_progress"] >= 1.0
    assert ready == 503
    live, _, ready, ready_body = finished
    assert (live, ready) == (200, 200) and "restore" not in ready_body


def test_outside_a_restore_liveness_follows_the_loop_and_a_finished_restore_restarts_its_clock() -> None:
    health = Health("loop", liveness_timeout_s=0.5, restore_stall_timeout_s=60)
    health._last_progress -= 10  # the loop was blocked by the restore below for 10 s
    with health.restoring("changelog") as restore:
        restore.update("t", 5, 1, 2)
        assert health.alive() and not health.status()["ready"]
        assert health.status()["restore"][0] | {"seconds": 0, "seconds_since_progress": 0} == {
            "what": "changelog", "records_read": 5, "partitions_done": 1, "partitions_total": 2,
            "seconds": 0, "seconds_since_progress": 0}
    health.set_ready(True)
    assert health.alive() and health.status()["ready"], "the restore's end counts as the loop's progress"
    health._last_progress -= 1
    assert not health.alive(), "without a restore, a loop that stops beating fails /livez as before"
    assert current_restore() is None


def test_a_reader_reporting_for_the_first_time_counts_as_progress() -> None:
    """Connecting, reading metadata and being assigned takes a while on a busy broker: the first report of a
    source (no record yet) restarts the stall clock; a repeated report without records does not."""
    health = Health("loop", liveness_timeout_s=0.5, restore_stall_timeout_s=1.0)
    with health.restoring("changelog") as restore:
        restore.last_progress -= 0.9
        restore.update("t", 0, 0, 3)
        assert restore.progress()["seconds_since_progress"] == 0
        restore.last_progress -= 0.9
        restore.update("t", 0, 0, 3)
        assert restore.progress()["seconds_since_progress"] >= 0.9
        restore.last_progress -= 0.2
        assert not health.alive(), "a reader that reports but reads nothing is stuck"
