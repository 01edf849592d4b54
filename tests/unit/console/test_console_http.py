"""The console's HTTP side in process (no Kafka, backends down): sign-in, sessions, CSRF, operator identity,
security headers, and the banner's backend status."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from lineguard.embedded import free_port
from services.console.app import COOKIE, Console, build_app
from services.console.settings import ConsoleSettings

DEV_PASSWORD = "lineguard-dev"


def settings(**overrides: object) -> ConsoleSettings:
    dead = f"http://127.0.0.1:{free_port()}"
    values = {"kafka_bootstrap": "127.0.0.1:1", "normalizer_url": dead, "advisor_url": dead, "actuator_url": dead,
              "notifier_url": dead, "voice_stt": "off", "voice_tts": "off", "backend_probe_s": 0.2, **overrides}
    return ConsoleSettings.from_env(environ={}, **values)


def run(test: Callable[[TestClient, Console], Awaitable[None]], **overrides: object) -> None:
    async def main() -> None:
        console = Console(settings(**overrides), kafka=False)
        async with TestClient(TestServer(build_app(console))) as client:
            await test(client, console)

    asyncio.run(main())


async def sign_in(client: TestClient, user: str = "alice", **headers: str) -> dict:
    response = await client.post("/api/login", json={"user": user, "password": DEV_PASSWORD}, headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


def test_no_session_is_refused_everywhere_but_sign_in() -> None:
    async def test(client: TestClient, _: Console) -> None:
        for path in ("/api/twin", "/api/feed", "/api/status", "/api/session", "/api/events",
                     "/api/machines/oven/trends", "/api/sop/SOP-OVEN-001"):
            assert (await client.get(path)).status == 401, path
        for path in ("/api/chat", "/api/recommendations/r1/vote", "/api/actions/a1/approve", "/api/voice",
                     "/api/logout"):
            assert (await client.post(path, json={})).status == 401, path
        index = await client.get("/")
        assert index.status == 200 and "Sign in" in await index.text()
        assert (await client.get("/static/app.js")).status == 200
        assert (await client.get("/livez")).status == 200

    run(test)


def test_sign_in_sets_a_safe_cookie_and_wrong_passwords_fail() -> None:
    async def test(client: TestClient, _: Console) -> None:
        bad = await client.post("/api/login", json={"user": "alice", "password": "nope"})
        assert bad.status == 401 and COOKIE not in bad.cookies
        assert (await client.post("/api/login", json={"user": "mallory", "password": DEV_PASSWORD})).status == 401
        response = await client.post("/api/login", json={"user": "alice", "password": DEV_PASSWORD})
        assert response.status == 200
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
        body = await response.json()
        assert body["user"] == "alice" and body["name"] == "Alice Baker" and len(body["csrf"]) > 30
        session = await (await client.get("/api/session")).json()
        assert session["user"] == "alice" and session["csrf"] == body["csrf"] and session["line_id"] == "line1"
        # behind a TLS-terminating ingress the cookie is Secure
        tls = await client.post("/api/login", json={"user": "alice", "password": DEV_PASSWORD},
                                headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in tls.headers["Set-Cookie"]
        # a sign-in posted from another site is refused
        forged = await client.post("/api/login", json={"user": "alice", "password": DEV_PASSWORD},
                                   headers={"Origin": "https://evil.example"})
        assert forged.status == 403

    run(test)


def test_repeated_wrong_passwords_lock_the_user_for_a_while() -> None:
    async def test(client: TestClient, _: Console) -> None:
        for _ in range(10):
            assert (await client.post("/api/login", json={"user": "bob", "password": "guess"})).status == 401
        locked = await client.post("/api/login", json={"user": "bob", "password": DEV_PASSWORD})
        assert locked.status == 429

    run(test)


def test_changes_need_the_sessions_csrf_token() -> None:
    async def test(client: TestClient, _: Console) -> None:
        alice = await sign_in(client)
        question = {"question": "why did the depositor stop?"}
        assert (await client.post("/api/chat", json=question)).status == 403
        assert (await client.post("/api/chat", json=question, headers={"X-CSRF-Token": "guess"})).status == 403
        ok = await client.post("/api/chat", json=question, headers={"X-CSRF-Token": alice["csrf"]})
        assert ok.status == 200  # the advisor is down: the stream says so
        lines = (await ok.text()).splitlines()
        assert '"type": "error"' in lines[-1] and "advisor" in lines[-1]

    run(test)


def test_another_operators_token_or_name_is_refused() -> None:
    async def test(client: TestClient, _: Console) -> None:
        # bob signs in on his own browser
        bob_response = await client.post("/api/login", json={"user": "bob", "password": DEV_PASSWORD})
        bob = await bob_response.json()
        bob_cookie = {"Cookie": f"{COOKIE}={bob_response.cookies[COOKIE].value}"}
        client.session.cookie_jar.clear()
        alice = await sign_in(client)
        # alice's cookie with bob's CSRF token
        refused = await client.post("/api/actions/a1/approve", json={}, headers={"X-CSRF-Token": bob["csrf"]})
        assert refused.status == 403
        # alice's session naming bob as the operator
        named = await client.post("/api/actions/a1/approve", json={"operator": "bob"},
                                  headers={"X-CSRF-Token": alice["csrf"]})
        assert named.status == 403 and "cannot act as bob" in (await named.json())["error"]
        # bob's session is still bob's, and alice's CSRF token does not work with it
        async with aiohttp.ClientSession() as other:
            async with other.get(client.make_url("/api/session"), headers=bob_cookie) as response:
                assert (await response.json())["user"] == "bob"
            async with other.post(client.make_url("/api/chat"), json={"question": "x"},
                                  headers={**bob_cookie, "X-CSRF-Token": alice["csrf"]}) as response:
                assert response.status == 403

    run(test)


def test_expired_and_signed_out_sessions_are_refused() -> None:
    async def test(client: TestClient, console: Console) -> None:
        alice = await sign_in(client)
        assert (await client.get("/api/twin")).status == 200
        now = console.sessions.clock()
        console.sessions.clock = lambda: now + 3600 * 9  # past the 8 h session lifetime
        assert (await client.get("/api/twin")).status == 401
        console.sessions.clock = lambda: now
        alice = await sign_in(client)
        assert (await client.post("/api/logout", json={}, headers={"X-CSRF-Token": alice["csrf"]})).status == 200
        assert (await client.get("/api/twin")).status == 401

    run(test, session_ttl_s=8 * 3600.0)


def test_security_headers() -> None:
    async def test(client: TestClient, _: Console) -> None:
        response = await client.get("/")
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        await sign_in(client)
        assert (await client.get("/api/twin")).headers["Cache-Control"] == "no-store"

    run(test)


def test_status_names_the_backends_that_are_down_and_the_twin_still_works() -> None:
    async def test(client: TestClient, console: Console) -> None:
        await sign_in(client)
        for _ in range(100):
            status = await (await client.get("/api/status")).json()
            if all(b["up"] is False for b in status["backends"] if b["configured"]):
                break
            await asyncio.sleep(0.05)
        down = {b["name"]: b for b in status["backends"]}
        assert down["advisor"]["up"] is False and down["actuator"]["up"] is False
        assert down["normalizer"]["up"] is False and "connect" in down["normalizer"]["error"].lower()
        assert down["notifier"]["configured"] is False  # no feed token: not an outage
        twin = await (await client.get("/api/twin")).json()
        assert twin["source"] == "plant model" and len(twin["machines"]) == 7
        assert (await client.get("/api/machines/oven/trends")).status == 200
        voice = await client.post("/api/voice", data=b"x", headers={"X-CSRF-Token": (await (
            await client.get("/api/session")).json())["csrf"]})
        assert voice.status == 503

    run(test)


def test_sop_sections_open_from_a_reference() -> None:
    async def test(client: TestClient, _: Console) -> None:
        await sign_in(client)
        response = await client.get("/api/sop/SOP-OVEN-001")
        assert response.status == 200
        first = await response.json()
        assert first["doc_id"] == "SOP-OVEN-001" and len(first["sections"]) > 1
        wanted = first["sections"][1]
        section = await (await client.get("/api/sop/SOP-OVEN-001", params={"section": wanted})).json()
        assert section["section"] == wanted and section["text"]
        assert (await client.get("/api/sop/NOPE")).status == 404

    run(test)


@pytest.mark.parametrize("body", [{"vote": 2}, {"vote": "1"}, {"vote": 1, "comment": 5}])
def test_bad_votes_are_refused(body: dict) -> None:
    async def test(client: TestClient, _: Console) -> None:
        alice = await sign_in(client)
        response = await client.post("/api/recommendations/r1/vote", json=body,
                                     headers={"X-CSRF-Token": alice["csrf"]})
        assert response.status == 400

    run(test)


def test_sign_in_through_an_authenticating_proxy() -> None:
    async def test(client: TestClient, _: Console) -> None:
        assert (await client.post("/api/login/proxy")).status == 401  # no header
        assert (await client.post("/api/login/proxy", headers={"X-Forwarded-User": "<bad name>"})).status == 401
        response = await client.post("/api/login/proxy", headers={"X-Forwarded-User": "carol@plant.example"})
        assert response.status == 200 and "HttpOnly" in response.headers["Set-Cookie"]
        assert (await (await client.get("/api/session")).json())["user"] == "carol@plant.example"

    run(test, auth_proxy_header="X-Forwarded-User")


def test_the_proxy_header_is_ignored_unless_configured() -> None:
    async def test(client: TestClient, _: Console) -> None:
        response = await client.post("/api/login/proxy", headers={"X-Forwarded-User": "alice"})
        assert response.status == 401

    run(test)
