"""The notifier's HTTP API in process: the console feed (auth, SSE format, replay after reconnect) and the pages
behind answer links (GET never acts; tampered, expired and used links refused with a reason)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from aiohttp import web

from services.notifier.links import Claims, LinkSigner
from services.notifier.web import FeedHub, Outcome, add_routes

TOKEN = "feed-token"


def event(i: int) -> dict:
    return {"notification_id": f"n{i}", "kind": "alarm", "line_id": "line1", "severity": "critical", "title": f"t{i}",
            "summary": "s", "created_at": i, "links": {"ack": "a", "vote_up": "u", "vote_down": "d"}}


async def serve(hub: FeedHub, signer: LinkSigner, answers: list, used: set[str]) -> tuple[web.AppRunner, str]:
    async def answer(claims: Claims, operator: str, comment: str | None) -> Outcome:
        answers.append((claims.action, operator, comment))
        used.add(claims.jti)
        return Outcome(200, "Vote recorded", f"Thank you, {operator}")

    app = web.Application()
    add_routes(app, hub, signer, TOKEN, answer, lambda jti: jti in used, lambda: True)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def read_events(resp: aiohttp.ClientResponse, count: int) -> list[tuple[str, str, dict]]:
    out, current = [], {}
    while len(out) < count:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if not line:
            if "data" in current:
                out.append((current["id"], current["event"], json.loads(current["data"])))
            current = {}
        elif not line.startswith(":") and ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    return out


def test_the_feed_streams_notifications_and_replays_what_a_reconnecting_console_missed() -> None:
    async def main() -> None:
        hub = FeedHub(10)
        runner, url = await serve(hub, LinkSigner("k", "http://h", 60), [], set())
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/v1/feed") as resp:
                assert resp.status == 401
            async with session.get(url + "/v1/feed", headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with session.get(url + "/v1/feed", headers=auth) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                await asyncio.sleep(0.05)
                hub.publish(event(1))
                hub.publish(event(2))
                got = await read_events(resp, 2)
            assert [(e[1], e[2]["notification_id"]) for e in got] == [("notification", "n1"), ("notification", "n2")]
            hub.publish(event(3))  # while the console is away
            async with session.get(url + "/v1/feed", headers={**auth, "Last-Event-ID": got[0][0]}) as resp:
                replay = await read_events(resp, 2)
            assert [e[2]["notification_id"] for e in replay] == ["n2", "n3"]
            async with session.get(url + "/v1/feed/recent?limit=2", headers=auth) as resp:
                assert [e["notification_id"] for e in await resp.json()] == ["n2", "n3"]
            async with session.get(url + "/v1/feed", headers=auth) as resp:
                hub.close()  # the service stops: open streams end (the server would wait for them)
                assert await asyncio.wait_for(resp.content.read(), 5) == b"retry: 2000\n\n"
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 2

    asyncio.run(main())


def test_answer_pages_act_once_and_say_why_a_link_is_refused() -> None:
    async def main() -> None:
        signer = LinkSigner("key", "http://h", 3600)
        answers: list = []
        runner, url = await serve(FeedHub(10), signer, answers, set())
        link = signer.make("up", "rec-1", "rec-1", "line1", "anna", time.time())
        path = url + "/a/" + link.rsplit("/", 1)[1]
        async with aiohttp.ClientSession() as session:
            async with session.get(path) as resp:
                page = await resp.text()
                assert resp.status == 200 and "<form method='post'>" in page and "anna" in page
            assert answers == []  # opening a link never acts (mail scanners open links)
            async with session.post(path, data={"operator": "anna <script>"}) as resp:
                assert resp.status == 400 and "the link was not used" in await resp.text()
            async with session.post(path, data={"operator": "anna", "comment": "good"}) as resp:
                assert resp.status == 200 and "Thank you, anna" in await resp.text()
            assert answers == [("up", "anna", "good")]
            async with session.post(path, data={"operator": "anna"}) as resp:
                assert resp.status == 410 and "already used" in await resp.text()
            body, mac = path.rsplit("/", 1)[1].split(".")
            async with session.post(f"{url}/a/{body[:-1]}A.{mac}") as resp:
                assert resp.status == 403 and "changed after it was sent" in await resp.text()
            old = signer.make("up", "rec-1", "rec-1", "line1", "anna", time.time() - 7200).rsplit("/", 1)[1]
            async with session.get(f"{url}/a/{old}") as resp:
                assert resp.status == 410 and "expired" in await resp.text()
        assert len(answers) == 1
        await runner.cleanup()

    asyncio.run(main())
