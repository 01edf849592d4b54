"""Channels against real servers: moto server (SNS -> SQS with a filter policy), aiosmtpd, local HTTP webhook
servers (Slack and Teams payloads), and a failing webhook that is retried with backoff without holding up the rest."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aiohttp import web

from services.notifier.channels import Delivery, Dispatcher, EmailSender, build_senders
from services.notifier.rules import parse_rules

pytestmark = pytest.mark.integration

RULES = """
channels:
  console: {type: console}
  slack: {type: webhook, format: slack}
  teams: {type: webhook, format: teams}
  flaky: {type: webhook, format: json}
  broken: {type: webhook, format: json}
  sns: {type: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:lineguard-alerts"}
  mail: {type: email}
groups:
  ops:
    channels: [console, slack, teams, flaky, broken, sns, mail]
    members: [{name: anna, email: anna@bakery.example}]
rules: [{name: all, notify: [ops]}]
"""


def notification(severity: str = "critical", nid: str = "alarm-1") -> dict:
    return {"notification_id": nid, "kind": "alarm", "line_id": "line1", "severity": severity,
            "title": "CRITICAL OVERTEMP on line1-oven: raised", "summary": "Zone 1 at 262 C", "category": "OVERTEMP",
            "recommendation_id": None, "action_id": None, "alarm_id": "a1", "root_id": nid, "subject": "alarm:a1",
            "steps": ["Lower zone 1"], "created_at": int(time.time() * 1000), "groups": ["ops"]}


@pytest.fixture
def smtp_server() -> Iterator[tuple[str, int, list]]:
    from aiosmtpd.controller import Controller

    from lineguard.embedded import free_port

    received: list = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
            received.append((envelope.rcpt_tos, envelope.content.decode("utf-8", "replace")))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    yield "127.0.0.1", port, received
    controller.stop()


async def start_sinks() -> tuple[web.AppRunner, int, dict[str, list]]:
    got: dict[str, list] = {"slack": [], "teams": [], "flaky": [], "broken": []}
    flaky_failures: dict[str, int] = {}  # each delivery fails twice before it gets through

    async def sink(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        got[name].append((time.monotonic(), dict(request.headers), await request.json()))
        key = request.headers["Idempotency-Key"]
        if name == "flaky" and flaky_failures.get(key, 0) < 2:
            flaky_failures[key] = flaky_failures.get(key, 0) + 1
            return web.Response(status=503, text="busy")
        if name == "broken":
            return web.Response(status=400, text="no such hook")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook/{name}", sink)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1], got


def test_every_channel_delivers_and_a_failing_one_is_retried_without_holding_up_the_others(
        moto_endpoint: str, smtp_server: tuple[str, int, list]) -> None:
    aws = {"region_name": "us-east-1", "endpoint_url": moto_endpoint, "aws_access_key_id": "x",
           "aws_secret_access_key": "y"}
    sns, sqs = boto3.client("sns", **aws), boto3.client("sqs", **aws)
    arn = sns.create_topic(Name="lineguard-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="critical-only")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"FilterPolicy": json.dumps({"severity": ["critical"], "line_id": ["line1"]})})
    host, port, mails = smtp_server
    rules = parse_rules(RULES)
    feed: list[dict] = []
    attempts: list[tuple[float, str, str, int, str, str | None]] = []
    sent: set[str] = set()

    async def main() -> dict[str, list]:
        import aiohttp

        runner, hook_port, got = await start_sinks()
        session = aiohttp.ClientSession()
        urls = {n: f"http://127.0.0.1:{hook_port}/hook/{n}" for n in ("slack", "teams", "flaky", "broken")}

        async def on_attempt(d: Delivery, attempt: int, status: str, error: str | None) -> None:
            attempts.append((time.monotonic(), d.channel, d.notification["notification_id"], attempt, status, error))
            if status == "sent":
                sent.add(d.id)

        senders = build_senders(rules.channels, publish=feed.append, session=lambda: session, webhook_urls=urls,
                                sns_client=lambda: sns,
                                email=EmailSender(host, port, "lineguard@bakery.example", None, None, False, 5.0),
                                timeout_s=5.0)
        dispatcher = Dispatcher("notifier_test", senders, lambda d: {"ack": f"http://n/a/{d.operator}"}, on_attempt,
                                lambda i: i in sent, retry_max=4, retry_base_s=0.3, retry_cap_s=2.0, timeout_s=5.0)
        dispatcher.ready.set()
        for n in (notification(), notification("minor", "alarm-2")):
            dispatcher.submit([Delivery(n, ch, t, op) for ch, t, op in rules.targets(["ops"])])
        await dispatcher.drain(20.0)
        # Sent once: submitting the same deliveries again starts nothing.
        assert dispatcher.submit([Delivery(notification(), ch, t, op) for ch, t, op in rules.targets(["ops"])]) \
            == 1  # only `broken`, which never succeeded, is tried again
        await dispatcher.drain(5.0)
        await session.close()
        await runner.cleanup()
        return got

    got = asyncio.run(main())

    by_channel: dict[str, list] = {}
    for at, channel, nid, attempt, status, error in attempts:
        by_channel.setdefault(channel, []).append((at, nid, attempt, status, error))
    # The flaky webhook failed twice (503) per delivery and was retried with growing delays until it got through.
    flaky = [a for a in by_channel["flaky"] if a[1] == "alarm-1"]
    assert [(a[2], a[3]) for a in flaky] == [(1, "failed"), (2, "failed"), (3, "sent")]
    assert flaky[1][0] - flaky[0][0] >= 0.14 and flaky[2][0] - flaky[1][0] >= 0.29  # 0.3 s, then 0.6 s, jittered
    # The others did not wait for it: all were delivered before its first retry.
    first_retry = flaky[1][0]
    for channel in ("console", "slack", "teams", "sns", "mail"):
        assert by_channel[channel][0][3] == "sent" and by_channel[channel][0][0] < first_retry, channel
    # A permanent error (HTTP 400) is not retried.
    assert [(a[2], a[3]) for a in by_channel["broken"]][:2] == [(1, "failed"), (1, "failed")]
    assert "HTTP 400" in by_channel["broken"][0][4]

    slack = got["slack"][0]
    assert slack[1]["Idempotency-Key"] == "alarm-1|slack|slack"
    assert slack[2]["blocks"][-1]["elements"][0]["url"] == "http://n/a/ops"
    teams = got["teams"][0][2]
    assert teams["attachments"][0]["content"]["type"] == "AdaptiveCard"
    assert teams["attachments"][0]["content"]["actions"][0]["url"] == "http://n/a/ops"

    assert len(mails) == 2 and all(rcpt == ["anna@bakery.example"] for rcpt, _ in mails)
    critical = [m for _, m in mails if "Subject: [CRITICAL] line1: CRITICAL OVERTEMP" in m]
    assert len(critical) == 1 and "http://n/a/anna" in critical[0]
    assert "Message-ID: <alarm-1.mail.anna.bakery.example@lineguard.notifier>" in critical[0]

    # SNS: the filter policy let the critical one through to SQS, not the minor one; the envelope carries the
    # subject, the attributes and the per-protocol (sqs) message.
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert len(messages) == 1
    envelope = json.loads(messages[0]["Body"])
    assert envelope["Subject"] == "[CRITICAL] line1: CRITICAL OVERTEMP on line1-oven: raised"
    assert envelope["MessageAttributes"]["severity"]["Value"] == "critical"
    assert envelope["MessageAttributes"]["groups"]["Type"] == "String.Array"
    body = json.loads(envelope["Message"])
    assert body["notification_id"] == "alarm-1" and body["links"] == {"ack": "http://n/a/ops"}
    assert [e["notification_id"] for e in feed] == ["alarm-1", "alarm-2"]
