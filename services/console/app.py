"""The console's web server: the app's static files, its JSON API, and a server-sent event stream to browsers.

    GET  /                          the web app (static files under /static; nothing from a CDN)
    POST /api/login                 {"user", "password"} -> session cookie + CSRF token
    POST /api/login/proxy           the same from an authenticating proxy's user header (OIDC), when configured
    POST /api/logout
    GET  /api/session               who is signed in, the CSRF token, the line, what voice can do
    GET  /api/status                the backends (up or down, why) and Kafka
    GET  /api/twin                  machines in flow order with state, readings, alarms, defect rates
    GET  /api/machines/{id}/trends  a machine's recent readings
    GET  /api/feed                  recommendations, notifications, actions waiting for approval
    GET  /api/events                server-sent events: twin, feed, actions, status
    POST /api/recommendations/{id}/vote      {"vote": 1 | -1, "comment"} -> feedback.v1, once per operator
    POST /api/actions/{id}/approve|reject    {"comment"} -> the actuator, as the signed-in operator
    POST /api/chat                  {"question"} -> the advisor's answer, streamed as NDJSON
    POST /api/voice                 recorded audio -> transcript, answer and answer audio, streamed as NDJSON
    GET  /api/voice/audio/{id}      the answer audio
    GET  /api/sop/{doc_id}?section= the SOP section a reference cites

Every /api route but login needs a session; every POST needs the session's CSRF token in `X-CSRF-Token`; the
operator of every approval, vote and question is the session's, never one named by the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from lineguard import telemetry
from lineguard.health import Health, create_app
from lineguard.kafka import Producer
from lineguard.logs import event, get_logger
from lineguard.plant import AssetGraph, load_plant
from lineguard.topics import FEEDBACK, LINE_ALARMS, LINE_INSPECTIONS, LINE_OBSERVATIONS, RECOMMENDATIONS
from services.console.auth import Session, SessionStore, User, csrf_ok, load_users, verify_password
from services.console.backends import Backend, BackendError, follow_sse
from services.console.feed import AlreadyVoted, Feed
from services.console.live import Follower
from services.console.settings import ConsoleSettings
from services.console.sops import SopLibrary
from services.console.twin import Twin
from services.console.voice import AudioStore, VoiceError, speech_chunks

log = get_logger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "lineguard_session"
KIND_BY_TOPIC = {LINE_OBSERVATIONS: "observations", LINE_ALARMS: "alarms", LINE_INSPECTIONS: "inspections"}

LOGINS = telemetry.counter("console", "logins", "Sign-in attempts by outcome.", ["outcome"])
REFUSED = telemetry.counter("console", "requests_refused", "API requests refused, by reason.", ["reason"])
VOTES = telemetry.counter("console", "votes", "Votes by outcome.", ["outcome"])
DECISIONS = telemetry.counter("console", "approval_decisions", "Approvals and rejections by outcome.",
                              ["decision", "outcome"])
QUESTIONS = telemetry.counter("console", "questions", "Questions asked, by channel and outcome.",
                              ["channel", "outcome"])
VOICE_FIRST_AUDIO = telemetry.histogram("console", "voice_first_audio_seconds",
                                        "From the end of a spoken question (upload received) to the first "
                                        "answer audio ready.")

OPERATOR_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
CLIENT_MAX_SIZE = 4 * 1024**2  # a recorded question (WebM/Opus, 20 s) is far below this
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class Hub:
    """Versions of what browsers watch; event streams wake when one moves."""

    def __init__(self) -> None:
        self.versions = {"twin": 0, "feed": 0, "actions": 0, "status": 0}
        self._event = asyncio.Event()

    def bump(self, *names: str) -> None:
        for name in names:
            self.versions[name] += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True when something moved, False after `timeout`."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class Console:
    def __init__(self, settings: ConsoleSettings, health: Health | None = None, *, kafka: bool = True) -> None:
        self.settings = settings
        self.kafka = kafka  # False: no follower and no producer (unit tests of the HTTP side)
        self.health = health or Health(settings.service_name, settings.liveness_timeout_s)
        self.users: dict[str, User] = load_users(settings.users_file)
        self.sessions = SessionStore(settings.session_ttl_s, settings.session_idle_s)
        self.plant = load_plant(settings.plant_path())
        self.line_id = settings.line_id or next(iter(self.plant.lines))
        if self.line_id not in self.plant.lines:
            raise ValueError(f"LINEGUARD_LINE_ID={self.line_id!r} is not a line of the plant model "
                             f"(known: {', '.join(self.plant.lines)})")
        self.normalizer = Backend("normalizer", settings.normalizer_url, "asset graph", settings.normalizer_token)
        self.advisor = Backend("advisor", settings.advisor_url, "chat and recommendations", settings.advisor_token,
                               timeout_s=30.0)
        self.actuator = Backend("actuator", settings.actuator_url, "approvals", settings.actuator_token,
                                timeout_s=15.0)
        self.notifier = Backend("notifier", settings.notifier_url, "live notifications", settings.feed_token)
        self.backends = [self.normalizer, self.advisor, self.actuator, self.notifier]
        self.twin = self._local_twin()
        self.feed = Feed(self.line_id)
        self.pending_actions: list[dict[str, Any]] = []
        self.sops = SopLibrary.from_folder(settings.docs_dir)
        self.audio = AudioStore()
        self.hub: Hub | None = None
        self.follower: Follower | None = None
        self.producer: Producer | None = None
        self.recognizer: Any = None
        self.synthesizer: Any = None
        self.voice_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._login_failures: dict[str, list[float]] = {}

    # --- the twin's structure ------------------------------------------------------------------------------

    def _twin_options(self) -> dict[str, Any]:
        s = self.settings
        return {"defect_window_ms": int(s.defect_window_s * 1000), "defect_classes": s.defect_classes,
                "trend_points": s.trend_points}

    def _local_twin(self) -> Twin:
        """The same entities the normalizer serves, from the plant model here (until the normalizer answers)."""
        return Twin.from_entities(AssetGraph(self.plant).entities(), self.line_id, source="plant model",
                                  **self._twin_options())

    async def load_asset_graph(self) -> None:
        """The twin's structure and latest values from the normalizer's asset graph; retried until it answers."""
        delay = 1.0
        while True:
            try:
                entities = await self.normalizer.request(
                    "GET", "/ngsi-ld/v1/entities", params={"type": "Line,Machine,Sensor", "limit": "1000"})
                twin = Twin.from_entities(entities, self.line_id, source="normalizer", **self._twin_options())
            except (BackendError, ValueError, KeyError, TypeError) as exc:
                event(log, "asset_graph_unavailable", level=logging.WARNING, error=str(exc)[:200])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
                continue
            with self.twin.lock:  # carry over what Kafka already folded into the local twin
                for eid, machine in self.twin.machines.items():
                    if eid in twin.machines:
                        fresh = twin.machines[eid]
                        for name, reading in machine.readings.items():
                            if reading.observed_at is not None:
                                fresh.readings[name] = reading
                        fresh.state, fresh.state_since = machine.state or fresh.state, machine.state_since
                        fresh.last_seen, fresh.alarms = machine.last_seen, machine.alarms
                        fresh.inspections = machine.inspections
                twin.version = self.twin.version + 1
                self.twin = twin
            self._bump("twin")
            event(log, "asset_graph_loaded", machines=len(twin.machines))
            return

    # --- Kafka -------------------------------------------------------------------------------------------

    def on_record(self, topic: str, value: dict[str, Any]) -> None:
        """Called on the follower's thread."""
        if topic in KIND_BY_TOPIC:
            if self.twin.fold(KIND_BY_TOPIC[topic], value):
                self._bump("twin")
        elif topic == RECOMMENDATIONS:
            if self.feed.add_recommendation(value):
                self._bump("feed")
        elif topic == FEEDBACK:
            self.feed.add_feedback(value)

    def _bump(self, *names: str) -> None:
        loop, hub = self._loop, self.hub
        if loop is None or hub is None:
            return
        try:
            if asyncio.get_running_loop() is loop:
                hub.bump(*names)
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(hub.bump, *names)

    # --- background tasks --------------------------------------------------------------------------------

    async def _probe_backends(self) -> None:
        last: list[Any] = []
        while True:
            # the notifier's status comes from following its feed (or it is not configured)
            await asyncio.gather(*(b.probe() for b in self.backends if b is not self.notifier))
            snapshot = [(b.status.up, b.status.error) for b in self.backends]
            kafka = self.follower.error if self.follower else None
            if snapshot + [kafka] != last:
                last = snapshot + [kafka]
                self._bump("status")
            await asyncio.sleep(self.settings.backend_probe_s)

    async def _poll_actions(self) -> None:
        while True:
            await self.refresh_actions()
            await asyncio.sleep(2.0)

    async def refresh_actions(self) -> None:
        try:
            body = await self.actuator.request("GET", "/v1/actions", params={"state": "pending_approval"})
        except BackendError:
            return
        actions = body.get("actions", []) if isinstance(body, dict) else (body or [])
        actions = [a for a in actions if isinstance(a, dict) and a.get("line_id") in (None, self.line_id)]
        if actions != self.pending_actions:
            self.pending_actions = actions
            self._bump("actions")

    def on_notification(self, name: str, data: dict[str, Any]) -> None:
        if name == "notification" and self.feed.add_notification(data):
            self._bump("feed")

    async def _follow_notifier(self, stop: asyncio.Event) -> None:
        if not self.settings.feed_token:
            self.notifier.status.configured = False
            self.notifier.mark(False, "not configured (LINEGUARD_CONSOLE_FEED_TOKEN unset)")
            return
        with contextlib.suppress(BackendError):  # what was sent before the console started
            recent = await self.notifier.request("GET", "/v1/feed/recent", params={"limit": "50"})
            for notification in recent if isinstance(recent, list) else []:
                self.on_notification("notification", notification)
        await follow_sse(self.notifier, "/v1/feed", self.on_notification, stop)

    def _setup_voice(self) -> None:
        from services.console import voice

        s = self.settings
        try:
            if s.voice_stt == "pocketsphinx":
                setpoints = [p for m in self.plant.lines[self.line_id].machines.values() for p in m.setpoints]
                vocab = voice.Vocabulary.from_twin(self.twin.snapshot(), setpoints, s.defect_classes)
                self.recognizer = voice.PocketsphinxRecognizer(vocab)
            elif s.voice_stt == "transcribe":
                import boto3

                self.recognizer = voice.TranscribeRecognizer(
                    boto3.client("transcribe", region_name=s.aws_region), boto3.client("s3", region_name=s.aws_region),
                    s.transcribe_bucket or "", s.transcribe_vocabulary)
            if s.voice_tts == "espeak-ng":
                self.synthesizer = voice.EspeakSynthesizer(s.espeak_voice)
            elif s.voice_tts == "polly":
                import boto3

                self.synthesizer = voice.PollySynthesizer(boto3.client("polly", region_name=s.aws_region),
                                                          s.polly_voice)
        except (ImportError, VoiceError, RuntimeError, ValueError) as exc:
            self.voice_error = f"voice is off: {exc}"
            event(log, "voice_unavailable", level=logging.WARNING, error=str(exc))

    async def background(self, app: web.Application) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self.hub = Hub()
        session = aiohttp.ClientSession()
        for backend in self.backends:
            backend.session = session
        self.follower = Follower(self.settings, self.on_record, history_s=self.settings.history_s)
        if self.kafka:
            self.producer = Producer(self.settings)
            self.follower.start()
        else:
            self.follower.caught_up.set()
        await asyncio.to_thread(self._setup_voice)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self._probe_backends()), asyncio.create_task(self._poll_actions()),
                 asyncio.create_task(self.load_asset_graph()), asyncio.create_task(self._follow_notifier(stop)),
                 asyncio.create_task(self._ready_when_caught_up())]
        yield
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.kafka:
            await asyncio.to_thread(self.follower.stop)
        await session.close()
        if self.producer is not None:
            await asyncio.to_thread(self.producer.close, 10)

    async def _ready_when_caught_up(self) -> None:
        assert self.follower is not None
        # polled, not waited for on a worker thread: a thread blocked forever (Kafka down) would hold up the
        # event loop's shutdown after SIGTERM
        while not self.follower.caught_up.is_set():
            await asyncio.sleep(0.2)
        self._bump("twin", "feed", "status")
        event(log, "console_ready")

    def ready(self) -> tuple[bool, str]:
        """Ready once the recent past of the topics is read (the twin and feed are whole)."""
        if self.follower is None or not self.follower.caught_up.is_set():
            return False, self.follower.error if self.follower and self.follower.error else "reading the topics"
        return True, ""

    def configure(self, app: web.Application) -> None:
        """The console's middlewares, background work and routes on an application with the health routes."""
        app.middlewares.extend([security_headers, require_session])
        app[CONSOLE_KEY] = self
        app.cleanup_ctx.append(self.background)
        add_routes(app)

    # --- request helpers -----------------------------------------------------------------------------------

    def cookie_secure(self, request: web.Request) -> bool:
        mode = self.settings.cookie_secure
        if mode != "auto":
            return mode == "true"
        return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"

    def status(self) -> dict[str, Any]:
        kafka_error = self.follower.error if self.follower else "not started"
        return {"backends": [b.status.to_dict() for b in self.backends],
                "kafka": {"up": kafka_error is None, "error": kafka_error,
                          "caught_up": bool(self.follower and self.follower.caught_up.is_set())},
                "voice": {"stt": getattr(self.recognizer, "provider", None),
                          "tts": getattr(self.synthesizer, "provider", None), "error": self.voice_error}}

    def feed_payload(self, user: str) -> dict[str, Any]:
        return {"recommendations": self.feed.items(user), "notifications": self.feed.notification_items()}


CONSOLE_KEY: web.AppKey[Console] = web.AppKey("console", Console)
SESSION_KEY: web.RequestKey[Session] = web.RequestKey("session", Session)


def _json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def require_session(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every /api route but login needs a live session; every unsafe method its CSRF token."""
    if not request.path.startswith("/api/") or request.path in ("/api/login", "/api/login/proxy"):
        return await handler(request)
    console = request.app[CONSOLE_KEY]
    session = console.sessions.get(request.cookies.get(COOKIE))
    if session is None:
        REFUSED.labels("no_session").inc()
        return _json_error(401, "sign in first (no session, or it expired)")
    if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf_ok(session, request.headers.get("X-CSRF-Token")):
        REFUSED.labels("csrf").inc()
        return _json_error(403, "missing or wrong CSRF token")
    request[SESSION_KEY] = session
    return await handler(request)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text=json.dumps({"error": "send a JSON object"}),
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "send a JSON object"}), content_type="application/json")
    return body


def _operator(request: web.Request, body: dict[str, Any]) -> User:
    """The signed-in operator; a body that names someone else is refused (nobody acts for another)."""
    user: User = request[SESSION_KEY].user
    named = body.get("operator")
    if named not in (None, user.id):
        REFUSED.labels("other_operator").inc()
        raise web.HTTPForbidden(text=json.dumps({"error": f"signed in as {user.id}: cannot act as {named}"}),
                                content_type="application/json")
    return user


# --- handlers --------------------------------------------------------------------------------------------

async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def login(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    origin = request.headers.get("Origin")
    if origin and origin.split("://", 1)[-1] != request.host:
        REFUSED.labels("cross_origin_login").inc()
        return _json_error(403, "sign-in from another origin")
    body = await _body(request)
    user_id, password = str(body.get("user", "")).strip(), str(body.get("password", ""))
    now = time.monotonic()
    failures = [t for t in console._login_failures.get(user_id, []) if now - t < 300]
    if len(failures) >= 10:
        LOGINS.labels("locked").inc()
        return _json_error(429, "too many failed sign-ins; wait five minutes")
    user = console.users.get(user_id)
    if user is None or not await asyncio.to_thread(verify_password, password, user.password_hash):
        console._login_failures[user_id] = [*failures, now]
        LOGINS.labels("failed").inc()
        event(log, "sign_in_failed", user=user_id[:64])
        return _json_error(401, "unknown user or wrong password")
    console._login_failures.pop(user_id, None)
    old = request.cookies.get(COOKIE)
    if old:
        console.sessions.delete(old)
    session = console.sessions.create(user)
    LOGINS.labels("ok").inc()
    event(log, "signed_in", operator=user.id)
    response = web.json_response({"user": user.id, "name": user.name, "csrf": session.csrf})
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", secure=console.cookie_secure(request),
                        path="/", max_age=int(console.settings.session_ttl_s))
    return response


async def logout(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    console.sessions.delete(request[SESSION_KEY].id)
    event(log, "signed_out", operator=request[SESSION_KEY].user.id)
    response = web.json_response({"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def proxy_login(request: web.Request) -> web.Response:
    """OIDC through an authenticating proxy: the proxy signed the operator in and names them in a header."""
    console = request.app[CONSOLE_KEY]
    header = console.settings.auth_proxy_header
    user_id = request.headers.get(header, "").strip() if header else ""
    if not header or not OPERATOR_ID.match(user_id):
        return _json_error(401, "no signed-in user from the authenticating proxy")
    known = console.users.get(user_id)
    user = known or User(user_id, request.headers.get("X-Forwarded-Preferred-Username", user_id)[:100], "")
    session = console.sessions.create(user)
    LOGINS.labels("proxy").inc()
    event(log, "signed_in", operator=user.id, via="proxy")
    response = web.json_response({"user": user.id, "name": user.name, "csrf": session.csrf})
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", secure=console.cookie_secure(request),
                        path="/", max_age=int(console.settings.session_ttl_s))
    return response


async def session_info(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    session = request[SESSION_KEY]
    return web.json_response({"user": session.user.id, "name": session.user.name, "csrf": session.csrf,
                              "line_id": console.line_id, "line_name": console.twin.line_name,
                              "voice": console.status()["voice"]})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONSOLE_KEY].status())


async def twin(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONSOLE_KEY].twin.snapshot())


async def trends(request: web.Request) -> web.Response:
    data = request.app[CONSOLE_KEY].twin.trends(request.match_info["machine"])
    if data is None:
        return _json_error(404, "no such machine")
    return web.json_response(data)


async def feed(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    return web.json_response({**console.feed_payload(request[SESSION_KEY].user.id),
                              "actions": console.pending_actions})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a snapshot of each view when it changes (at most about three a second)."""
    console = request.app[CONSOLE_KEY]
    user = request[SESSION_KEY].user.id
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    assert console.hub is not None
    seen: dict[str, int] = {}
    payloads = {"twin": lambda: console.twin.snapshot(), "feed": lambda: console.feed_payload(user),
                "actions": lambda: {"actions": console.pending_actions}, "status": console.status}
    try:
        while True:
            for name, version in list(console.hub.versions.items()):
                if seen.get(name) != version:
                    seen[name] = version
                    data = json.dumps(payloads[name]())
                    await response.write(f"event: {name}\ndata: {data}\n\n".encode())
            sent = time.monotonic()
            if request.transport is None or request.transport.is_closing():
                break
            if not await console.hub.wait(15.0):
                await response.write(b": keep-alive\n\n")
            # Coalesce bursts: a busy line changes the twin many times a second; at most 4 snapshots a second.
            await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - sent)))
            if console.sessions.get(request.cookies.get(COOKIE)) is None:
                break  # signed out or expired: the stream ends with the session
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


async def vote(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    body = await _body(request)
    user = _operator(request, body)
    value = body.get("vote")
    comment = body.get("comment")
    if value not in (1, -1) or (comment is not None and (not isinstance(comment, str) or len(comment) > 1000)):
        return _json_error(400, 'send {"vote": 1 or -1, "comment": optional text up to 1000 characters}')
    rec_id = request.match_info["rec_id"]
    try:
        record = console.feed.begin_vote(rec_id, user.id, value, comment.strip() if comment else None)
    except AlreadyVoted as exc:
        VOTES.labels("duplicate").inc()
        return _json_error(409, "you already voted on this recommendation", vote=exc.vote)
    except KeyError:
        return _json_error(404, "no such recommendation in the feed")
    try:
        if console.producer is None:
            raise RuntimeError("no Kafka producer")
        await console.producer.send(FEEDBACK, rec_id, record)
    except Exception as exc:  # noqa: BLE001 - DeliveryError or a broker outage: the vote is not recorded
        console.feed.end_vote(record, ok=False)
        VOTES.labels("failed").inc()
        event(log, "vote_failed", level=logging.WARNING, operator=user.id, recommendation=rec_id, error=str(exc))
        return _json_error(503, "the vote could not be recorded (Kafka); try again")
    console.feed.end_vote(record, ok=True)
    VOTES.labels("ok").inc()
    event(log, "vote_recorded", operator=user.id, recommendation=rec_id, vote=value)
    console._bump("feed")
    return web.json_response({"recorded": True, "vote": record})


async def decide(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    body = await _body(request)
    user = _operator(request, body)
    decision = request.match_info["decision"]
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 1000):
        return _json_error(400, "comment: text up to 1000 characters")
    action_id = request.match_info["action_id"]
    try:
        result = await console.actuator.request("POST", f"/v1/actions/{action_id}/{decision}",
                                                json_body={"operator": user.id, "comment": comment or ""})
    except BackendError as exc:
        DECISIONS.labels(decision, "refused" if exc.status < 500 else "unavailable").inc()
        return _json_error(exc.status if exc.status < 500 else 503, str(exc), detail=exc.body)
    DECISIONS.labels(decision, "ok").inc()
    event(log, f"action_{decision}d" if decision.endswith("e") else f"action_{decision}ed", operator=user.id,
          action=action_id)
    await console.refresh_actions()
    return web.json_response({"decision": decision, "operator": user.id, "action": result})


async def _ask_lines(console: Console, question: str, operator: str) -> AsyncIterator[dict[str, Any]]:
    """The advisor's streamed answer as dicts."""
    async for line in console.advisor.stream_lines(
            "POST", f"/v1/lines/{console.line_id}/ask",
            json_body={"question": question, "stream": True, "operator": operator},
            headers={"X-Lineguard-Operator": operator}):
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


async def _ndjson(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def _write(response: web.StreamResponse, item: dict[str, Any]) -> None:
    await response.write((json.dumps(item) + "\n").encode())


async def chat(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    body = await _body(request)
    user = _operator(request, body)
    question = body.get("question")
    if not isinstance(question, str) or not question.strip() or len(question) > 500:
        return _json_error(400, 'send {"question": "..."} with 1 to 500 characters')
    event(log, "question", operator=user.id, channel="text", question=question[:200])
    response = await _ndjson(request)
    await _write(response, {"type": "question", "question": question.strip(), "operator": user.id})
    try:
        async for item in _ask_lines(console, question.strip(), user.id):
            await _write(response, item)
        QUESTIONS.labels("text", "answered").inc()
    except BackendError as exc:
        QUESTIONS.labels("text", "failed").inc()
        await _write(response, {"type": "error", "error": str(exc), "backend": exc.backend})
    await response.write_eof()
    return response


async def voice(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    user = _operator(request, {})
    received = time.perf_counter()
    if console.recognizer is None:
        return _json_error(503, console.voice_error or "speech to text is off (LINEGUARD_VOICE_STT=off)")
    max_bytes = int(console.settings.voice_max_audio_s * 64_000)  # ~ uncompressed 16 kHz PCM; Opus is far less
    if request.content_length and request.content_length > max_bytes:
        return _json_error(413, f"a question is at most {console.settings.voice_max_audio_s:.0f} s")
    audio = await request.read()
    if len(audio) > max_bytes:
        return _json_error(413, f"a question is at most {console.settings.voice_max_audio_s:.0f} s")
    content_type = request.headers.get("Content-Type", "audio/webm")
    response = await _ndjson(request)
    try:
        transcript = await console.recognizer.transcribe(audio, content_type)
    except VoiceError as exc:
        QUESTIONS.labels("voice", "not_understood").inc()
        await _write(response, {"type": "error", "error": str(exc)})
        await response.write_eof()
        return response
    await _write(response, {"type": "transcript", "text": transcript,
                            "stt_s": round(time.perf_counter() - received, 3)})
    if not transcript:
        QUESTIONS.labels("voice", "not_understood").inc()
        await _write(response, {"type": "error", "error": "I did not catch a question; try again"})
        await response.write_eof()
        return response
    event(log, "question", operator=user.id, channel="voice", question=transcript[:200])
    answer: list[str] = []
    try:
        async for item in _ask_lines(console, transcript, user.id):
            if item.get("type") == "delta":
                answer.append(item.get("text", ""))
            await _write(response, item)
    except BackendError as exc:
        QUESTIONS.labels("voice", "failed").inc()
        await _write(response, {"type": "error", "error": str(exc), "backend": exc.backend})
        await response.write_eof()
        return response
    QUESTIONS.labels("voice", "answered").inc()
    if console.synthesizer is not None:
        for index, chunk in enumerate(speech_chunks("".join(answer))):
            try:
                data = await console.synthesizer.synthesize(chunk)
            except VoiceError as exc:
                await _write(response, {"type": "error", "error": str(exc)})
                break
            audio_id = console.audio.put(user.id, console.synthesizer.content_type, data)
            if index == 0:
                first = time.perf_counter() - received
                VOICE_FIRST_AUDIO.observe(first)
            await _write(response, {"type": "audio", "index": index, "url": f"/api/voice/audio/{audio_id}",
                                    "content_type": console.synthesizer.content_type, "text": chunk,
                                    "since_upload_s": round(time.perf_counter() - received, 3)})
    await _write(response, {"type": "end"})
    await response.write_eof()
    return response


async def voice_audio(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    found = console.audio.get(request.match_info["audio_id"], request[SESSION_KEY].user.id)
    if found is None:
        return _json_error(404, "no such audio (it expires after ten minutes)")
    content_type, data = found
    return web.Response(body=data, content_type=content_type)


async def sop(request: web.Request) -> web.Response:
    found = request.app[CONSOLE_KEY].sops.lookup(request.match_info["doc_id"], request.query.get("section"))
    if found is None:
        return _json_error(404, "no such document")
    return web.json_response(found)


def build_app(console: Console) -> web.Application:
    """The whole application (tests run it in-process; the service runs it through `lineguard.service`)."""
    app = create_app(console.health, client_max_size=CLIENT_MAX_SIZE)
    console.configure(app)
    if console.health.ready is False:
        console.health.set_ready(True)  # in-process: nothing waits on readiness
    return app


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC, follow_symlinks=False)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/login/proxy", proxy_login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/session", session_info)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/twin", twin)
    app.router.add_get("/api/machines/{machine}/trends", trends)
    app.router.add_get("/api/feed", feed)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/recommendations/{rec_id}/vote", vote)
    app.router.add_post("/api/actions/{action_id}/{decision:approve|reject}", decide)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/voice", voice)
    app.router.add_get("/api/voice/audio/{audio_id}", voice_audio)
    app.router.add_get("/api/sop/{doc_id}", sop)
    return app
