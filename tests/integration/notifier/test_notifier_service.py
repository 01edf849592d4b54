"""The notifier as it runs: `python -m services.notifier` (a Faust worker) against a real Tansu broker, a local
webhook server (Slack format) and a local actuator approvals API, both real aiohttp servers.

- An alarm storm (1,000 raises within a minute for one line) with a SIGKILL in the middle: at most the line cap
  notified, nothing delivered twice across the restart, the rest counted as suppressed by reason.
- Escalation stages on the real clock (seconds), surviving a SIGKILL; acknowledging by link stops them.
- Signed links: a vote lands on feedback.v1 once; reused, tampered and expired links are refused with a page
  saying why (also after a restart); approve goes to the actuator's approvals API.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from polling import wait_for
from schema_samples import sample

from lineguard import topics
from lineguard.embedded import ROOT, die_with_parent, free_port
from lineguard.health import BackgroundHttpServer
from lineguard.kafka import Producer, dlq_headers
from lineguard.kafka.clients import read_topic
from lineguard.settings import Settings
from services.notifier.links import LinkSigner

pytestmark = pytest.mark.integration

LINK_KEY = "test-link-key-0123456789abcdef"
FEED_TOKEN = "feed-token"
ACTUATOR_TOKEN = "actuator-token"
RULES = """
defaults: {line_cap: 5, line_cap_window_s: 600, dedup_window_s: 600, startup_grace_s: 0, digest_interval_s: 3600,
           recipient_cap: 1000, max_event_age_s: 900}
channels: {console: {type: console}, hook: {type: webhook, format: slack}}
groups:
  ops: {channels: [console, hook]}
  leads: {channels: [console, hook]}
rules:
  - {name: approvals, match: {kinds: [action]}, notify: [ops]}
  - name: critical
    match: {severities: [critical]}
    notify: [ops]
    escalation: {stages: [{after_s: 8, notify: [leads]}], remind_every_s: 3, max_reminders: 1}
  - {name: rest, notify: [ops]}
"""


class Sinks:
    """The webhook receiver and the actuator's approvals API, on one real HTTP server."""

    def __init__(self) -> None:
        self.hooks: list[tuple[dict, dict]] = []
        self.approvals: list[tuple[str, str, str, dict]] = []
        self.lock = threading.Lock()
        self.server = BackgroundHttpServer(self._app, "127.0.0.1", 0)

    def _app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.json()
            with self.lock:
                self.hooks.append((dict(request.headers), body))
            return web.Response(text="ok")

        async def decide(request: web.Request) -> web.Response:
            with self.lock:
                self.approvals.append((request.match_info["id"], request.match_info["verb"],
                                       request.headers.get("Authorization", ""), await request.json()))
            return web.json_response({"status": "approved"})

        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/v1/actions/{id}/{verb}", decide)
        return app

    def notifications(self) -> list[tuple[str, dict]]:
        """(Idempotency-Key, Slack payload) of every delivery received."""
        with self.lock:
            return [(h["Idempotency-Key"], b) for h, b in self.hooks]

    def titles(self) -> list[str]:
        return [b["blocks"][0]["text"]["text"] for _, b in self.notifications()]

    def links(self, title_part: str) -> dict[str, str]:
        for _, body in self.notifications():
            if title_part in body["blocks"][0]["text"]["text"]:
                return {e["action_id"]: e["url"] for e in body["blocks"][-1]["elements"]}
        raise AssertionError(f"no notification with {title_part!r}: {self.titles()}")


@pytest.fixture
def sinks() -> Iterator[Sinks]:
    s = Sinks()
    s.server.start()
    yield s
    s.server.stop()


class NotifierProcess:
    def __init__(self, settings: Settings, rules: Path, sink_port: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {**os.environ, "LINEGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                    "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix, "LINEGUARD_HTTP_PORT": str(self.port),
                    "LINEGUARD_HTTP_HOST": "127.0.0.1", "LINEGUARD_NOTIFIER_RULES_FILE": str(rules),
                    "LINEGUARD_NOTIFIER_LINK_KEY": LINK_KEY, "LINEGUARD_NOTIFIER_FEED_TOKEN": FEED_TOKEN,
                    "LINEGUARD_NOTIFIER_PUBLIC_URL": self.url,
                    "LINEGUARD_NOTIFIER_WEBHOOK_URLS": f"hook=http://127.0.0.1:{sink_port}/hook",
                    "LINEGUARD_NOTIFIER_ACTUATOR_URL": f"http://127.0.0.1:{sink_port}",
                    "LINEGUARD_NOTIFIER_ACTUATOR_TOKEN": ACTUATOR_TOKEN, "LINEGUARD_NOTIFIER_TICK_S": "0.2",
                    "LINEGUARD_NOTIFIER_RETRY_BASE_S": "0.2", "LINEGUARD_SERVICE_NAME": "notifier",
                    "LINEGUARD_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.notifier"], cwd=ROOT, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        ok = wait_for(lambda: self.proc.poll() is not None or self.status("/readyz") == 200, timeout=60, interval=0.1)
        assert ok and self.proc.poll() is None, f"notifier did not become ready: {self.tail()}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the notifier did not stop on SIGTERM within 25 s: {self.tail()}") from None
        return self.proc.returncode

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("lineguard_notifier_") and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def post(self, url: str, **form: str) -> tuple[int, str]:
        data = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in form.items()).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@pytest.fixture
def notifier(make_settings: Callable[..., Settings], create_topics: Callable, sinks: Sinks,
             tmp_path: Path) -> Iterator[tuple[NotifierProcess, Producer, Settings]]:
    settings = make_settings()
    create_topics(settings)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    proc = NotifierProcess(settings, rules, sinks.server.port, tmp_path / "notifier.log")
    producer = Producer(settings)
    proc.start()
    yield proc, producer, settings
    producer.flush(10)
    if proc.proc is not None and proc.proc.poll() is None:
        started = time.monotonic()
        assert proc.stop() == 0, proc.tail()  # SIGTERM: a clean exit ...
        assert time.monotonic() - started < 20, proc.tail()  # ... well inside the pod's 30 s grace period


def alarm(alarm_id: str, *, severity: str = "major", state: str = "active", line: str = "line1",
          raised_at: int | None = None) -> dict:
    now = int(time.time() * 1000)
    return {"alarm_id": alarm_id, "line_id": line, "entity_id": f"urn:ngsi-ld:Machine:{line}-{alarm_id}",
            "alarm_type": "OVERTEMP", "severity": severity, "state": state,
            "raised_at": raised_at if raised_at is not None else now, "cleared_at": None, "duration_ms": None,
            "raise_count": 1, "message": f"{alarm_id} too hot", "updated_at": now, "raw_id": "r"}


def produce(producer: Producer, records: list[tuple[str, dict]], topic: str = topics.LINE_ALARMS) -> None:
    for key, value in records:
        producer.produce(topic, key, value)
    assert producer.flush(30) == 0


def test_storm_with_a_sigkill_notifies_at_most_the_cap_and_nothing_twice(
        notifier: tuple[NotifierProcess, Producer, Settings], sinks: Sinks) -> None:
    proc, producer, _ = notifier
    raised = int(time.time() * 1000)
    storm = [("line1", alarm(f"m{i % 50}", raised_at=raised + i % 50)) for i in range(1000)]
    produce(producer, storm[:500])
    assert wait_for(lambda: proc.metrics().get(
        'lineguard_notifier_messages_consumed_total{topic="line.alarms.v1"}', 0) >= 500, timeout=60), proc.tail()
    first = proc.metrics()
    suppressed = {k: v for k, v in first.items() if k.startswith("lineguard_notifier_suppressed_total")}
    notified = first.get('lineguard_notifier_notifications_total{kind="alarm"}', 0)
    assert notified == 5, first
    assert notified + sum(suppressed.values()) == 500, suppressed  # every raise accounted for
    assert suppressed['lineguard_notifier_suppressed_total{reason="line_cap"}'] == 45
    assert suppressed['lineguard_notifier_suppressed_total{reason="no_state_change"}'] == 450
    # The second half of the storm, and a SIGKILL while the notifier works through it.
    produce(producer, storm[500:])
    proc.kill()
    proc.start()
    # A sentinel on line1's partition (same key), for another line: once it is notified, the storm is done.
    produce(producer, [("line1", alarm("sentinel", line="line9"))])
    assert wait_for(lambda: any("sentinel" in t for t in sinks.titles()), timeout=60), proc.tail()
    keys = [k for k, _ in sinks.notifications()]
    assert len(keys) == len(set(keys)), f"delivered twice: {sorted(keys)}"
    line1 = {k.split("|")[0] for k, body in sinks.notifications() if "line9" not in body["text"]}
    assert len(line1) == 5, line1
    assert proc.metrics().get('lineguard_notifier_notifications_total{kind="alarm"}', 0) == 1  # the sentinel


def test_escalation_survives_a_restart_and_links_answer_once(
        notifier: tuple[NotifierProcess, Producer, Settings], sinks: Sinks) -> None:
    proc, producer, settings = notifier
    # The schedule starts when the notifier takes the alarm, after this and before the sinks hear of it (on a loaded
    # machine seconds may pass between the two): the lower bound counts from here, the upper from the sinks.
    produced_at = time.monotonic()
    produce(producer, [("line1", alarm("burner", severity="critical")), ("line1", alarm("belt", severity="critical"))])
    assert wait_for(lambda: len(sinks.titles()) >= 2, timeout=30), proc.tail()
    raised_at = time.monotonic()
    # The console feed shows both, with the interface's fields.
    status, body = proc.get(proc.url + "/v1/feed/recent?limit=10", {"Authorization": f"Bearer {FEED_TOKEN}"})
    assert status == 200
    feed = json.loads(body)
    assert {e["kind"] for e in feed} == {"alarm"} and len(feed) == 2
    assert set(feed[0]["links"]) == {"ack", "vote_up", "vote_down"} and feed[0]["severity"] == "critical"
    assert proc.get(proc.url + "/v1/feed/recent")[0] == 401

    # Acknowledge "belt" at once: its escalation must never fire.
    belt = sinks.links("belt")
    assert proc.get(belt["ack"])[0] == 200  # GET shows a form and does nothing
    status, page = proc.post(belt["ack"], operator="anna")
    assert status == 200 and "Acknowledged" in page
    # Vote on "burner": recorded once; the same link again, and another link of the same operator, refused.
    burner = sinks.links("burner")
    status, page = proc.post(burner["vote_up"], operator="anna", comment="right call")
    assert status == 200 and "Vote recorded" in page
    status, page = proc.post(burner["vote_up"], operator="anna")
    assert status == 410 and "already used" in page
    status, page = proc.post(burner["vote_down"], operator="anna")
    assert status == 409 and "one vote each" in page
    token = burner["ack"].rsplit("/", 1)[1]
    body_part, mac = token.split(".")
    tampered = f"{proc.url}/a/{body_part}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
    status, page = proc.post(tampered)
    assert status == 403 and "changed after it was sent" in page
    expired = LinkSigner(LINK_KEY, proc.url, 1).make("up", "x", "rec-x", "line1", "anna", time.time() - 10)
    status, page = proc.post(expired)
    assert status == 410 and "expired" in page

    # SIGKILL before the first stage is due (8 s after the raise); the restarted worker keeps the schedule.
    assert time.monotonic() - raised_at < 8, "too slow to test the restart before the first stage"
    proc.kill()
    proc.start()
    status, page = proc.post(burner["vote_up"], operator="anna")  # still used after the restart
    assert status == 410
    assert wait_for(lambda: any(t.startswith("Reminder 1") for t in sinks.titles()), timeout=30), sinks.titles()
    elapsed = time.monotonic() - produced_at
    titles = sinks.titles()
    assert elapsed >= 11 - 0.5  # stage at 8 s, reminder 3 s later: the schedule, not restart-relative
    assert [t for t in titles if t.startswith("Escalation 1")] == [
        "Escalation 1: CRITICAL OVERTEMP on line1-burner: raised"]  # once, though the worker was killed
    assert not any("belt" in t for t in titles if t.startswith(("Escalation", "Reminder")))  # acknowledged
    keys = [k for k, _ in sinks.notifications()]
    assert len(keys) == len(set(keys)), f"delivered twice: {sorted(keys)}"

    votes = [r.value for r in read_topic(settings, topics.FEEDBACK, timeout_s=30)]
    assert len(votes) == 1 and votes[0]["vote"] == 1 and votes[0]["operator"] == "anna"
    assert votes[0]["comment"] == "right call" and votes[0]["recommendation_id"].startswith("alarm:")


def test_approve_link_goes_to_the_actuator_and_lands_on_feedback(
        notifier: tuple[NotifierProcess, Producer, Settings], sinks: Sinks) -> None:
    proc, producer, settings = notifier
    now = int(time.time() * 1000)
    action = {"action_id": "act-1", "recommendation_id": "line1|w1|scheduled", "line_id": "line1",
              "machine_entity_id": "urn:ngsi-ld:Machine:line1-oven", "parameter": "zone1_setpoint", "value": 200.0,
              "previous_value": 220.0, "unit_code": "CEL", "mode": "approve", "status": "pending_approval",
              "reason": "zone 1 runs hot", "actor": None, "created_at": now, "updated_at": now,
              "expires_at": now + 600_000, "readback_value": None, "error": None}
    produce(producer, [("act-1", action)], topics.ACTIONS)
    produce(producer, [("line1", b"not avro")])  # bad input: dead-lettered, never a crash
    rec = {**sample(producer.serde.schema(topics.RECOMMENDATIONS)), "id": "line1|w7|scheduled", "line_id": "line1",
           "severity": "major", "category": "quality", "title": "Burnt cookies: lower oven zone 2",
           "summary": "Zone 2 runs 30 C over its setpoint.", "steps": ["Lower zone 2 by 10 C", "Watch the detector"],
           "created_at": now}
    produce(producer, [("line1", rec)], topics.RECOMMENDATIONS)
    assert wait_for(lambda: any("Approval needed" in t for t in sinks.titles()), timeout=30), proc.tail()
    links = sinks.links("Approval needed")
    assert set(links) == {"ack", "vote_up", "vote_down", "approve", "reject"}
    status, page = proc.post(links["approve"], operator="ben", comment="ok to lower")
    assert status == 200 and "approved" in page
    assert sinks.approvals == [("act-1", "approve", f"Bearer {ACTUATOR_TOKEN}",
                                {"operator": "ben", "comment": "ok to lower"})]
    assert proc.post(links["reject"], operator="ben")[0] in (200, 502)  # a second decision is the actuator's call
    # The recommendation, with its steps, and a vote on it that the advisor reads by recommendation id.
    assert wait_for(lambda: any("Burnt cookies" in t for t in sinks.titles()), timeout=30), proc.tail()
    body = next(b for _, b in sinks.notifications() if "Burnt cookies" in b["text"])
    assert "1. Lower zone 2 by 10 C" in json.dumps(body)
    status, page = proc.post(sinks.links("Burnt cookies")["vote_down"], operator="ben", comment="zone 3, not 2")
    assert status == 200, page
    records = [r.value for r in read_topic(settings, topics.FEEDBACK, timeout_s=30)]
    votes = [r for r in records if r["kind"] == "vote"]
    assert [(v["recommendation_id"], v["vote"], v["comment"]) for v in votes] == [
        ("line1|w7|scheduled", -1, "zone 3, not 2")]
    approval = [r for r in records if r["kind"] == "approval"]
    assert len(approval) == 1 and approval[0]["action_id"] == "act-1"
    assert approval[0]["recommendation_id"] == "line1|w1|scheduled"
    assert re.fullmatch(r"approval-[0-9a-f]{16}", approval[0]["feedback_id"])
    # Every delivery attempt and its result is on notifications.v1, keyed by the notification id; a webhook's
    # target is its channel name, never its URL (a secret).
    attempts = [(r.key, r.value) for r in read_topic(settings, topics.NOTIFICATIONS, timeout_s=30)]
    approval_sent = {(v["channel"], v["target"], v["status"], v["attempt"]) for k, v in attempts
                     if v["action_id"] == "act-1" and v["status"] == "sent"}
    assert approval_sent == {("console", "console", "sent", 1), ("hook", "hook", "sent", 1)}
    assert all(k.decode() == v["notification_id"] for k, v in attempts)
    assert not any("127.0.0.1" in v["target"] for _, v in attempts)
    dead = list(read_topic(settings, topics.dlq(topics.LINE_ALARMS), decode=False, timeout_s=30))
    assert [d.raw_value for d in dead] == [b"not avro"]
    headers = dlq_headers(dead[0].headers)
    assert headers["__connect.errors.topic"] == settings.topic(topics.LINE_ALARMS)
    assert headers["__connect.errors.stage"] == "deserialize"
    assert headers["__connect.errors.exception.class.name"] == "CorruptPayloadError"
    assert headers["lineguard.service"] == "notifier" and dead[0].key == b"line1"
