"""The notifier's HTTP API on the service port: the console's live feed (SSE) and the pages behind answer links.

GET  /v1/feed                 Server-Sent Events, `event: notification`, JSON data (bearer token)
GET  /v1/feed/recent?limit=N  the last N notifications as a JSON list, oldest first (bearer token)
GET  /a/{token}               the answer page: what the link does, a comment box, a button (never acts)
POST /a/{token}               acts once: acknowledge, vote, approve or reject; a page says what happened or why not
POST /v1/webhook-sink/{name}  (embedded profile only) a local webhook receiver; GET shows what it received
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from services.notifier.links import Claims, LinkError, LinkSigner

KEEPALIVE_S = 15.0
OPERATOR_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")  # what the actuator's approvals API accepts
MAX_COMMENT = 1000
VERBS = {"ack": "Acknowledge", "up": "Vote: helpful", "down": "Vote: not helpful", "approve": "Approve the action",
         "reject": "Reject the action"}


class FeedHub:
    """The last notifications, and a queue per connected console."""

    def __init__(self, size: int) -> None:
        self.recent: deque[tuple[int, dict]] = deque(maxlen=size)
        self.subscribers: set[asyncio.Queue] = set()
        self.closed = False
        self._seq = 0

    def publish(self, event: dict) -> None:
        self._seq += 1
        self.recent.append((self._seq, event))
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):  # a console that stopped reading loses events, not us
                queue.put_nowait((self._seq, event))

    def close(self) -> None:
        """End every open stream (the service stops; the HTTP server waits for open requests)."""
        self.closed = True
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def after(self, seq: int) -> list[tuple[int, dict]]:
        return [(s, e) for s, e in self.recent if s > seq]


@dataclass
class Outcome:
    status: int
    title: str
    message: str


Answer = Callable[[Claims, str, str | None], Awaitable[Outcome]]


def _page(status: int, title: str, body: str) -> web.Response:
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
           f"<title>{html.escape(title)}</title><meta name='robots' content='noindex'></head>"
           f"<body style='font-family:sans-serif;max-width:36em;margin:2em auto'><h1>{html.escape(title)}</h1>"
           f"{body}</body></html>")
    return web.Response(status=status, text=doc, content_type="text/html",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


REFUSED = {"tampered": (403, "Link refused: it was changed"), "malformed": (400, "Link refused: it is broken"),
           "expired": (410, "Link refused: it has expired"), "used": (410, "Link refused: it was already used")}


def add_routes(app: web.Application, hub: FeedHub, signer: LinkSigner, feed_token: str,
               answer: Answer, used: Callable[[str], bool], ready: Callable[[], bool],
               clock: Callable[[], float] = time.time, sink: deque | None = None) -> None:

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return bool(feed_token) and hmac.compare_digest(given.encode(), f"Bearer {feed_token}".encode())

    async def recent(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), hub.recent.maxlen or 1000))
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        return web.json_response([e for _, e in list(hub.recent)[-limit:]])

    async def feed(request: web.Request) -> web.StreamResponse:
        if not authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        hub.subscribers.add(queue)
        try:
            await resp.write(b"retry: 2000\n\n")
            last = request.headers.get("Last-Event-ID")
            if last and last.isdigit():  # a console that reconnects gets what it missed
                for seq, ev in hub.after(int(last)):
                    await resp.write(_sse(seq, ev))
            while not hub.closed:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                await resp.write(_sse(*item))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            hub.subscribers.discard(queue)
        return resp

    def check(token: str) -> tuple[Claims | None, web.Response | None]:
        try:
            claims = signer.verify(token, clock())
        except LinkError as exc:
            status, title = REFUSED[exc.reason]
            return None, _page(status, title, f"<p>{html.escape(str(exc))}</p>")
        if used(claims.jti):
            status, title = REFUSED["used"]
            return None, _page(status, title, "<p>This link was used already; each link works once.</p>")
        return claims, None

    async def show(request: web.Request) -> web.Response:
        claims, refused = check(request.match_info["token"])
        if refused is not None:
            return refused
        assert claims is not None
        verb = VERBS[claims.action]
        form = (f"<p>{html.escape(verb)} for line {html.escape(claims.line_id)} "
                f"(notification {html.escape(claims.notification_id)}).</p>"
                f"<form method='post'><p><label>Your name<br><input name='operator' "
                f"value='{html.escape(claims.operator, quote=True)}'></label></p>"
                f"<p><label>Comment (optional)<br><textarea name='comment' rows='3' cols='40'></textarea></label></p>"
                f"<p><button type='submit'>{html.escape(verb)}</button></p></form>")
        return _page(200, verb, form)

    async def act(request: web.Request) -> web.Response:
        if not ready():
            return _page(503, "Not ready", "<p>The notifier is starting; try again in a few seconds.</p>")
        claims, refused = check(request.match_info["token"])
        if refused is not None:
            return refused
        assert claims is not None
        form = await request.post()
        operator = str(form.get("operator") or claims.operator).strip()
        if not OPERATOR_NAME.match(operator):
            return _page(400, "Check your name", "<p>A name may use letters, digits and . _ @ - (at most 64); "
                                                 "go back and try again: the link was not used.</p>")
        comment = str(form.get("comment") or "").strip()[:MAX_COMMENT] or None
        outcome = await answer(claims, operator, comment)
        return _page(outcome.status, outcome.title, f"<p>{html.escape(outcome.message)}</p>")

    if sink is not None:
        async def sink_post(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "expected JSON"}, status=400)
            sink.append({"name": request.match_info["name"], "received_at": int(clock() * 1000),
                         "idempotency_key": request.headers.get("Idempotency-Key"), "body": body})
            return web.json_response({"ok": True})

        async def sink_get(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            return web.json_response([e for e in sink if e["name"] == name])

        app.router.add_post("/v1/webhook-sink/{name}", sink_post)
        app.router.add_get("/v1/webhook-sink/{name}", sink_get)
    app.router.add_get("/v1/feed", feed)
    app.router.add_get("/v1/feed/recent", recent)
    app.router.add_get("/a/{token}", show)
    app.router.add_post("/a/{token}", act)


def _sse(seq: int, event: dict) -> bytes:
    return f"id: {seq}\nevent: notification\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
