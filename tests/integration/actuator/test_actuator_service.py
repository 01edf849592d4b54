"""The actuator process against a real Tansu broker and the simulator's real control API.

Exactly-once effect, judged by the simulator's change log (not by the actuator's own records): an approved action
changes the setpoint once although the actuator is killed with SIGKILL after the controller applied the change and
before the audit record of it, restarted, and fed the same recommendation again. A controller that is down ends
actions `failed` with the reason while the actuator stays live and ready, and the audit trail has every step.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from polling import wait_for

from lineguard.embedded import free_port
from lineguard.kafka import Producer, read_topic
from lineguard.plant import default_plant_path, load_plant
from simulator.clock import SimClock
from simulator.control_api import create_app
from simulator.model import CookieLine

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
PLANT = load_plant(default_plant_path())
CONTROL_TOKEN = "control-token-it"
ALICE = "alice-it-token"
CONSOLE = "console-it-token"
OVEN = "urn:ngsi-ld:Machine:line1-oven"


class Controller:
    """The simulator's control API on its own thread; `kill_on_write` SIGKILLs a process right after the first
    write was applied, before the answer leaves (the actuator dies between the call and its audit record)."""

    def __init__(self) -> None:
        self.sim = CookieLine(PLANT, seed=5, clock=SimClock(speed=0))
        self.kill_on_write: subprocess.Popen | None = None
        self.writes: list[str | None] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        @web.middleware
        async def watch(request: web.Request, handler):
            response = await handler(request)
            if request.method == "POST":
                self.writes.append(request.headers.get("Idempotency-Key"))
                victim, self.kill_on_write = self.kill_on_write, None
                if victim is not None:
                    victim.kill()
                    victim.wait(10)
            return response

        async def start() -> None:
            app = create_app(self.sim, CONTROL_TOKEN)
            app.middlewares.append(watch)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            self.port = self._runner.addresses[0][1]

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    def actuator_changes(self) -> list[dict]:
        return [c for c in self.sim.changes if c["source"].startswith("lineguard-actuator")]

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def recommendation(rec_id: str, value: float = 175.0) -> dict:
    return {"id": rec_id, "line_id": "line1", "window_start": 0, "window_end": 300_000, "trigger": "scheduled",
            "severity": "major", "category": "process_deviation", "title": "Oven zone 2 runs hot",
            "summary": "Zone 2 runs 40 C over its setpoint.",
            "root_cause": {"entity_id": OVEN, "description": "zone 2 over-fires"},
            "evidence": [{"finding_id": "f1", "entity_id": OVEN, "attribute": "zone2_temperature", "value": 229.8,
                          "unit_code": "CEL", "description": "zone2_temperature 229.8 C over its 205 C maximum"}],
            "steps": ["Lower the zone 2 setpoint."],
            "proposed_actions": [{"machine_entity_id": OVEN, "parameter": "zone2_setpoint", "value": value,
                                  "unit_code": "CEL", "reason": "zone 2 runs 40 C over its setpoint"}],
            "model": {"provider": "analysis", "model_id": "analysis", "version": None}, "created_at": 1}


def produce(settings, *records: dict) -> None:
    producer = Producer(settings)
    for record in records:
        producer.produce("recommendations.v1", record["line_id"], record)
    assert producer.flush(30) == 0
    producer.close()


def trail(settings) -> list[dict]:
    return [r.value for r in read_topic(settings, "actions.v1")]


def http(port: int, method: str, path: str, token: str | None = ALICE, body: dict | None = None
         ) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def status_of(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture
def rig(make_settings, create_topics, tmp_path) -> Iterator:
    settings = make_settings()
    create_topics(settings)
    controller = Controller()
    procs: list[subprocess.Popen] = []

    def start(control_url: str | None = None, **extra: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
               "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix, "LINEGUARD_HTTP_PORT": str(port),
               "LINEGUARD_HTTP_HOST": "127.0.0.1", "LINEGUARD_LOG_LEVEL": "INFO", "LINEGUARD_GROUP_ID": "actuator-it",
               "LINEGUARD_SERVICE_NAME": "actuator",
               "LINEGUARD_CONTROL_API_URL": control_url or f"http://127.0.0.1:{controller.port}",
               "LINEGUARD_CONTROL_API_TOKEN": CONTROL_TOKEN, "LINEGUARD_CONTROL_API_TIMEOUT_S": "1",
               "LINEGUARD_CONTROL_API_BACKOFF_S": "0.05",
               "LINEGUARD_ACTUATOR_OPERATOR_TOKENS": f"alice:{ALICE}",
               "LINEGUARD_ACTUATOR_DELEGATE_TOKENS": f"console:{CONSOLE}", **extra}
        with open(tmp_path / f"actuator-{len(procs)}.log", "w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "services.actuator"], cwd=ROOT, env=env,
                                    stdout=log_file, stderr=subprocess.STDOUT)
        procs.append(proc)
        assert wait_for(lambda: status_of(port, "/readyz") == 200 or proc.poll() is not None, 60), \
            (tmp_path / f"actuator-{len(procs) - 1}.log").read_text()
        assert proc.poll() is None, (tmp_path / f"actuator-{len(procs) - 1}.log").read_text()
        return proc, port

    yield settings, controller, start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    controller.close()


def test_an_approved_change_happens_once_despite_sigkill_restart_and_replays(rig) -> None:
    settings, controller, start = rig
    proc, port = start()
    produce(settings, recommendation("rec-it-1"))
    aid = "rec-it-1-a0"
    assert wait_for(lambda: http(port, "GET", f"/v1/actions/{aid}")[1].get("state") == "pending_approval", 30)
    listed = http(port, "GET", "/v1/actions?state=pending_approval")[1]["actions"]
    assert [a["action_id"] for a in listed] == [aid] and listed[0]["current_value"] == 190.0

    # the controller applies the change, then the actuator dies before it hears back or records it
    controller.kill_on_write = proc
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        http(port, "POST", f"/v1/actions/{aid}/approve", token=CONSOLE, body={"operator": "alice", "comment": "ok"})
    assert proc.wait(10) == -signal.SIGKILL
    assert len(controller.actuator_changes()) == 1
    assert trail(settings)[-1]["status"] == "executing"

    # restarted: the ledger comes back from actions.v1, the call is repeated with the same key, nothing changes
    proc, port = start()
    assert wait_for(lambda: http(port, "GET", f"/v1/actions/{aid}")[1].get("state") == "executed", 30)
    action = http(port, "GET", f"/v1/actions/{aid}")[1]
    assert action["actor"] == "alice via console" and action["readback_value"] == 175.0
    assert action["current_value"] == 190.0
    assert controller.writes == [aid, aid]  # the repeat carried the same Idempotency-Key

    # the same recommendation again, twice, and a restart after them: no new action, no new change
    produce(settings, recommendation("rec-it-1"), recommendation("rec-it-1"))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    proc, port = start()
    produce(settings, recommendation("rec-it-1"))
    assert wait_for(lambda: status_of(port, "/readyz") == 200, 10)
    records = trail(settings)
    statuses = [r["status"] for r in records if r["action_id"] == aid]
    assert statuses == ["proposed", "pending_approval", "approved", "executing", "executed"]
    changes = controller.actuator_changes()
    assert len(changes) == 1 and changes[0]["previous"] == 190.0 and changes[0]["value"] == 175.0
    assert controller.sim.machines["oven"].setpoints["zone2_setpoint"] == 175.0
    assert http(port, "POST", f"/v1/actions/{aid}/approve", body={})[0] == 409


def test_a_controller_that_is_down_fails_actions_with_the_reason_and_the_actuator_stays_ready(rig) -> None:
    settings, controller, start = rig
    proc, port = start(control_url=f"http://127.0.0.1:{free_port()}")
    produce(settings, recommendation("rec-down-1"), recommendation("rec-down-2", 176.0))
    assert wait_for(lambda: {a["action_id"]: a["status"] for a in trail(settings)}.get("rec-down-2-a0") == "failed",
                    40)
    for aid in ("rec-down-1-a0", "rec-down-2-a0"):
        status, action = http(port, "GET", f"/v1/actions/{aid}")
        assert status == 200 and action["state"] == "failed"
        assert "reading the live state failed" in action["reason"] and "gave up after 4 attempts" in action["reason"]
        assert [r["status"] for r in trail(settings) if r["action_id"] == aid] == ["proposed", "failed"]
    assert status_of(port, "/livez") == 200 and status_of(port, "/readyz") == 200
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'lineguard_actuator_actions_total{outcome="failed"} 2.0' in metrics
    assert 'lineguard_actuator_control_api_errors_total{kind="connection",operation="read"} 8.0' in metrics
    assert controller.actuator_changes() == []
    assert http(port, "GET", "/v1/actions/nope")[0] == 404
    assert http(port, "GET", "/v1/actions", token=None)[0] == 401
