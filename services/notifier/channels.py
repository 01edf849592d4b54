"""Channels and the dispatcher: every delivery on its own task, retried with backoff, never holding up the others.

A delivery is (notification, channel, target, operator). Its id `<notification id>|<channel>|<target>` is
deterministic; the dispatcher skips an id that the ledger says was sent or that is in flight, and reports every
attempt and its result (`on_attempt`), which the service writes to notifications.v1. Receivers get the id too
(webhook `Idempotency-Key` header, e-mail Message-ID, SNS attribute) to drop the rare duplicate a crash between
a channel's acknowledgement and the ledger write can cause.
"""

from __future__ import annotations

import asyncio
import random
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from lineguard import telemetry
from lineguard.logs import event, get_logger
from services.notifier import render
from services.notifier.rules import Channel

log = get_logger("services.notifier.channels")


class PermanentFailure(Exception):
    """Retrying cannot help (a 4xx other than 408/429, a missing configuration)."""


@dataclass(frozen=True)
class Delivery:
    notification: dict
    channel: str
    target: str
    operator: str  # whom the answer links are made for

    @property
    def id(self) -> str:
        return f"{self.notification['notification_id']}|{self.channel}|{self.target}"


class Sender(Protocol):
    async def send(self, d: Delivery, links: dict[str, str]) -> None: ...


class LogSender:
    async def send(self, d: Delivery, links: dict[str, str]) -> None:
        n = d.notification
        event(log, "notification", notification_id=n["notification_id"], kind=n["kind"], line_id=n["line_id"],
              severity=n["severity"], title=n["title"])


class ConsoleSender:
    def __init__(self, publish: Callable[[dict], None]) -> None:
        self.publish = publish

    async def send(self, d: Delivery, links: dict[str, str]) -> None:
        self.publish(render.feed_event(d.notification, links))


class WebhookSender:
    def __init__(self, session_factory: Callable[[], aiohttp.ClientSession], url: str | None, fmt: str,
                 timeout_s: float) -> None:
        self._session = session_factory
        self.url = url
        self.fmt = fmt
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, d: Delivery, links: dict[str, str]) -> None:
        if not self.url:
            raise PermanentFailure(f"no URL for webhook channel {d.channel} (LINEGUARD_NOTIFIER_WEBHOOK_URLS)")
        payload = render.webhook_json(d.notification, links, self.fmt)
        headers = {"Idempotency-Key": d.id, "X-Lineguard-Notification-Id": d.notification["notification_id"]}
        async with self._session().post(self.url, json=payload, headers=headers, timeout=self.timeout) as resp:
            if resp.status < 300:
                return
            body = (await resp.text())[:200]
            error = f"HTTP {resp.status}: {body}"
            if 400 <= resp.status < 500 and resp.status not in (408, 429):
                raise PermanentFailure(error)
            raise RuntimeError(error)


class SnsSender:
    def __init__(self, client_factory: Callable[[], Any], topic_arn: str) -> None:
        self._client = client_factory
        self.topic_arn = topic_arn

    async def send(self, d: Delivery, links: dict[str, str]) -> None:
        args = render.sns_publish_args(d.notification, links, self.topic_arn, d.notification.get("groups", []))
        await asyncio.to_thread(self._client().publish, **args)


class EmailSender:
    def __init__(self, host: str | None, port: int, sender: str, user: str | None, password: str | None,
                 starttls: bool, timeout_s: float) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.user, self.password, self.starttls, self.timeout = user, password, starttls, timeout_s

    async def send(self, d: Delivery, links: dict[str, str]) -> None:
        if not self.host:
            raise PermanentFailure("no SMTP server configured (LINEGUARD_NOTIFIER_SMTP_HOST)")
        msg = render.email(d.notification, links, self.sender, d.target, d.id)
        await asyncio.to_thread(self._send, msg)

    def _send(self, msg: Any) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.ehlo()
            if self.starttls and smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.user and self.password:
                smtp.login(self.user, self.password)
            smtp.send_message(msg)


Report = Callable[[Delivery, int, str, str | None], Awaitable[None]]


class Dispatcher:
    """Runs deliveries concurrently; a channel that fails is retried with exponential backoff and jitter on its
    own tasks, so the other channels (and the next notifications) go out meanwhile."""

    def __init__(self, service: str, senders: dict[str, Sender], links_for: Callable[[Delivery], dict[str, str]],
                 on_attempt: Report, is_sent: Callable[[str], bool], *, retry_max: int, retry_base_s: float,
                 retry_cap_s: float, timeout_s: float, per_channel: int = 8) -> None:
        self.senders = senders
        self.links_for = links_for
        self.on_attempt = on_attempt
        self.is_sent = is_sent
        self.retry_max, self.retry_base_s, self.retry_cap_s, self.timeout_s = \
            retry_max, retry_base_s, retry_cap_s, timeout_s
        self.ready = asyncio.Event()  # set once the ledger caught up (a restart must not resend)
        self.inflight: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._limits = {name: asyncio.Semaphore(per_channel) for name in senders}
        self._m_attempts = telemetry.counter(service, "deliveries", "Delivery attempts by channel and outcome "
                                             "(sent, retry, failed).", ["channel", "outcome"])
        self._m_latency = telemetry.histogram(service, "delivery_duration_seconds",
                                              "From the event's time to the channel's acknowledgement.", ["channel"])

    def submit(self, deliveries: list[Delivery]) -> int:
        """Start the deliveries not sent and not in flight; returns how many started."""
        started = 0
        for d in deliveries:
            if d.id in self.inflight or self.is_sent(d.id):
                continue
            if d.channel not in self.senders:
                event(log, "unknown_channel", level=30, channel=d.channel)
                continue
            self.inflight.add(d.id)
            task = asyncio.create_task(self._deliver(d), name=f"deliver {d.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    def backoff(self, attempt: int) -> float:
        delay = min(self.retry_cap_s, self.retry_base_s * 2 ** (attempt - 1))
        return delay * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not security

    async def _deliver(self, d: Delivery) -> None:
        try:
            await self.ready.wait()
            if self.is_sent(d.id):
                return
            sender = self.senders[d.channel]
            for attempt in range(1, self.retry_max + 1):
                error: str | None = None
                permanent = False
                async with self._limits[d.channel]:
                    try:
                        await asyncio.wait_for(sender.send(d, self.links_for(d)), self.timeout_s)
                    except PermanentFailure as exc:
                        error, permanent = str(exc), True
                    except Exception as exc:  # noqa: BLE001 - any channel failure is retried
                        error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
                if error is None:
                    self._m_attempts.labels(d.channel, "sent").inc()
                    created = d.notification.get("event_ms") or d.notification["created_at"]
                    self._m_latency.labels(d.channel).observe(max(0.0, time.time() - created / 1000.0))
                    await self.on_attempt(d, attempt, "sent", None)
                    return
                last = permanent or attempt == self.retry_max
                self._m_attempts.labels(d.channel, "failed" if last else "retry").inc()
                event(log, "delivery_failed", level=30, channel=d.channel, notification_id=d.notification[
                    "notification_id"], attempt=attempt, final=last, error=error)
                await self.on_attempt(d, attempt, "failed", error)
                if last:
                    return
                await asyncio.sleep(self.backoff(attempt))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reporting failed (Kafka down): logged, the intent stays open
            event(log, "delivery_report_failed", level=40, delivery=d.id, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.inflight.discard(d.id)

    async def drain(self, timeout: float) -> None:
        """Give deliveries in flight up to `timeout` seconds, then cancel them (their intents stay open and are
        sent after the restart)."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def build_senders(channels: dict[str, Channel], *, publish: Callable[[dict], None],
                  session: Callable[[], aiohttp.ClientSession], webhook_urls: dict[str, str],
                  sns_client: Callable[[], Any], email: EmailSender, timeout_s: float) -> dict[str, Sender]:
    """One sender per channel of the rules."""
    senders: dict[str, Sender] = {}
    for name, ch in channels.items():
        if ch.type == "console":
            senders[name] = ConsoleSender(publish)
        elif ch.type == "log":
            senders[name] = LogSender()
        elif ch.type == "webhook":
            senders[name] = WebhookSender(session, webhook_urls.get(name), ch.format, timeout_s)
        elif ch.type == "sns":
            senders[name] = SnsSender(sns_client, ch.topic_arn or "")
        elif ch.type == "email":
            senders[name] = email
    return senders
