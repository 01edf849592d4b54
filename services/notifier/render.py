"""One notification, written for each channel: plain text, Slack blocks, a Teams card, SNS per-protocol text, e-mail.

`n` is the notification as the console feed shows it (see `feed_event`); `links` are the signed answer links made
for the recipient of this delivery.
"""

from __future__ import annotations

import json
import unicodedata
from email.message import EmailMessage
from typing import Any

SMS_LIMIT = 160  # one GSM-7 part; longer messages are split and cost more
SUBJECT_LIMIT = 99  # SNS e-mail subjects must be under 100 characters, one line
LINK_LABELS = {"ack": "Acknowledge", "approve": "Approve", "reject": "Reject", "vote_up": "Helpful",
               "vote_down": "Not helpful"}


def feed_event(n: dict, links: dict[str, str]) -> dict:
    """The console feed's JSON (the interface the console codes against)."""
    out = {"notification_id": n["notification_id"], "kind": n["kind"], "line_id": n["line_id"],
           "severity": n["severity"], "title": n["title"], "summary": n["summary"],
           "created_at": n["created_at"], "links": links}
    if n.get("recommendation_id"):
        out["recommendation_id"] = n["recommendation_id"]
    if n.get("action_id"):
        out["action_id"] = n["action_id"]
    return out


def one_line(text: str) -> str:
    return " ".join(text.split())


def ascii_fold(text: str) -> str:
    """SMS-safe: accents folded, anything outside ASCII dropped (keeps a message in one GSM-7 part)."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def subject(n: dict) -> str:
    return clip(one_line(f"[{n['severity'].upper()}] {n['line_id']}: {n['title']}"), SUBJECT_LIMIT)


def text(n: dict, links: dict[str, str]) -> str:
    lines = [f"{n['severity'].upper()} | {n['line_id']} | {n['kind']}", n["title"], "", n["summary"]]
    steps = n.get("steps") or []
    if steps:
        lines += ["", "What to do:", *[f"{i}. {s}" for i, s in enumerate(steps, 1)]]
    if links:
        lines += ["", *[f"{LINK_LABELS.get(k, k)}: {url}" for k, url in links.items()]]
    return "\n".join(lines)


def sms(n: dict) -> str:
    return clip(ascii_fold(one_line(f"LINEGUARD {n['severity'].upper()} {n['line_id']}: {n['title']}")), SMS_LIMIT)


def sns_publish_args(n: dict, links: dict[str, str], topic_arn: str, groups: list[str]) -> dict[str, Any]:
    """Publish arguments: MessageStructure json with per-protocol text, attributes for subscription filters."""
    body = text(n, links)
    message = {"default": body, "email": body, "sms": sms(n),
               "sqs": json.dumps(feed_event(n, links)), "lambda": json.dumps(feed_event(n, links)),
               "https": json.dumps(feed_event(n, links))}
    attributes = {
        "line_id": {"DataType": "String", "StringValue": n["line_id"]},
        "severity": {"DataType": "String", "StringValue": n["severity"]},
        "kind": {"DataType": "String", "StringValue": n["kind"]},
        "notification_id": {"DataType": "String", "StringValue": n["notification_id"]},
    }
    if n.get("category"):
        attributes["category"] = {"DataType": "String", "StringValue": n["category"]}
    if groups:
        attributes["groups"] = {"DataType": "String.Array", "StringValue": json.dumps(sorted(groups))}
    # SNS subjects: ASCII, one line, under 100 characters.
    return {"TopicArn": topic_arn, "Subject": ascii_fold(subject(n)), "MessageStructure": "json",
            "Message": json.dumps(message), "MessageAttributes": attributes}


def slack(n: dict, links: dict[str, str]) -> dict:
    """Slack incoming-webhook payload: blocks with link buttons (a button opens the signed answer page)."""
    emoji = {"critical": ":red_circle:", "major": ":large_orange_circle:"}.get(n["severity"], ":large_blue_circle:")
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(one_line(n["title"]), 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": clip(n["summary"], 2900)}},
        {"type": "context", "elements": [{"type": "mrkdwn",
                                          "text": f"{emoji} *{n['severity']}* | {n['line_id']} | {n['kind']}"}]},
    ]
    steps = n.get("steps") or []
    if steps:
        blocks.insert(2, {"type": "section", "text": {"type": "mrkdwn", "text": clip(
            "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)), 2900)}})
    if links:
        buttons = []
        for key, url in links.items():
            button = {"type": "button", "text": {"type": "plain_text", "text": LINK_LABELS.get(key, key)},
                      "url": url, "action_id": key}
            if key in ("approve", "ack"):
                button["style"] = "primary"
            elif key == "reject":
                button["style"] = "danger"
            buttons.append(button)
        blocks.append({"type": "actions", "elements": buttons})
    return {"text": subject(n), "blocks": blocks}


def teams(n: dict, links: dict[str, str]) -> dict:
    """Microsoft Teams (workflow / incoming webhook) payload: an Adaptive Card with Action.OpenUrl buttons."""
    body: list[dict] = [
        {"type": "TextBlock", "text": n["title"], "weight": "Bolder", "size": "Medium", "wrap": True,
         "color": "Attention" if n["severity"] == "critical" else "Default"},
        {"type": "FactSet", "facts": [{"title": "Line", "value": n["line_id"]},
                                      {"title": "Severity", "value": n["severity"]},
                                      {"title": "Kind", "value": n["kind"]}]},
        {"type": "TextBlock", "text": n["summary"], "wrap": True},
    ]
    for i, step in enumerate(n.get("steps") or [], 1):
        body.append({"type": "TextBlock", "text": f"{i}. {step}", "wrap": True, "spacing": "None"})
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": "1.4", "body": body,
            "actions": [{"type": "Action.OpenUrl", "title": LINK_LABELS.get(k, k), "url": url}
                        for k, url in links.items()]}
    return {"type": "message", "summary": subject(n),
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
                             "content": card}]}


def webhook_json(n: dict, links: dict[str, str], fmt: str) -> dict:
    if fmt == "slack":
        return slack(n, links)
    if fmt == "teams":
        return teams(n, links)
    return feed_event(n, links)


def email(n: dict, links: dict[str, str], sender: str, to: str, delivery_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject(n)
    # A stable Message-ID: a mail system that sees the same notification twice can tell.
    msg["Message-ID"] = f"<{delivery_id.replace('|', '.').replace('@', '.')}@lineguard.notifier>"
    msg["X-Lineguard-Notification-Id"] = n["notification_id"]
    msg["X-Lineguard-Severity"] = n["severity"]
    msg.set_content(text(n, links))
    return msg
