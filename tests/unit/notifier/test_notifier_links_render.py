"""Signed links, the per-channel payloads, and the Kafka security mapping onto Faust credentials."""

from __future__ import annotations

import json

import pytest

from lineguard.settings import Settings, SettingsError
from services.notifier import render
from services.notifier.kafka_auth import broker_credentials
from services.notifier.links import LinkError, LinkSigner

NOW = 1_800_000_000.0
N = {"notification_id": "alarm-1", "kind": "alarm", "line_id": "line1", "severity": "critical",
     "title": "CRITICAL OVERTEMP on line1-oven: raised " + "x" * 120, "summary": "Zone 1 at 262 °C, setpoint 220 °C",
     "category": "OVERTEMP", "created_at": 1, "steps": ["Lower zone 1", "Check the burner"], "groups": ["ops"]}


def test_a_link_verifies_and_every_change_is_refused() -> None:
    signer = LinkSigner("k" * 32, "http://h:8086/", 3600)
    url = signer.make("up", "rec-1", "line1|w|t", "line1", "anna", NOW)
    assert url.startswith("http://h:8086/a/")
    token = url.rsplit("/", 1)[1]
    claims = signer.verify(token, NOW + 10)
    assert (claims.action, claims.subject, claims.operator) == ("up", "line1|w|t", "anna")
    body, mac = token.split(".")
    forged = LinkSigner("k" * 32, "http://h", 3600).token(claims.__class__(**{**claims.__dict__, "action": "down"}))
    assert forged.split(".")[1] != mac  # changing the claims changes the signature ...
    with pytest.raises(LinkError) as err:
        signer.verify(forged.split(".")[0] + "." + mac, NOW)  # ... so swapping claims under the old one fails
    assert err.value.reason == "tampered"
    with pytest.raises(LinkError) as err:
        LinkSigner("other-key", "http://h", 3600).verify(token, NOW)
    assert err.value.reason == "tampered"
    with pytest.raises(LinkError) as err:
        signer.verify(token, NOW + 3600)
    assert err.value.reason == "expired"
    with pytest.raises(LinkError) as err:
        signer.verify(body, NOW)
    assert err.value.reason == "malformed"


def test_an_approval_link_expires_with_the_approval() -> None:
    signer = LinkSigner("k" * 32, "http://h", 86400)
    token = signer.make("approve", "n", "s", "line1", "anna", NOW, action_id="a1", expires_at=NOW + 60).rsplit("/")[-1]
    assert signer.verify(token, NOW + 59).action_id == "a1"
    with pytest.raises(LinkError):
        signer.verify(token, NOW + 61)


def test_sns_message_has_per_protocol_text_and_filterable_attributes() -> None:
    args = render.sns_publish_args(N, {"ack": "http://h/a/t"}, "arn:aws:sns:eu-central-1:1:t", ["ops", "leads"])
    assert args["MessageStructure"] == "json"
    assert len(args["Subject"]) < 100 and "\n" not in args["Subject"] and args["Subject"].isascii()
    assert render.sns_publish_args({**N, "title": "Zone 1 at 262 °C"}, {}, "arn:x", [])["Subject"] == \
        "[CRITICAL] line1: Zone 1 at 262 C"
    message = json.loads(args["Message"])
    assert set(message) >= {"default", "email", "sms"}
    assert len(message["sms"]) <= 160 and message["sms"].isascii()
    assert "http://h/a/t" in message["email"]
    attrs = args["MessageAttributes"]
    assert attrs["severity"] == {"DataType": "String", "StringValue": "critical"}
    assert json.loads(attrs["groups"]["StringValue"]) == ["leads", "ops"]


def test_slack_and_teams_payloads_carry_the_answer_links_as_buttons() -> None:
    links = {"ack": "http://h/a/1", "vote_up": "http://h/a/2"}
    slack = render.slack(N, links)
    buttons = slack["blocks"][-1]["elements"]
    assert [b["url"] for b in buttons] == list(links.values()) and slack["text"]
    card = render.teams(N, links)["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert [a["url"] for a in card["content"]["actions"]] == list(links.values())
    assert all(a["type"] == "Action.OpenUrl" for a in card["content"]["actions"])


def settings(**security: str) -> Settings:
    return Settings.from_env(environ={}, kafka_security=security)


def test_kafka_security_maps_to_faust_credentials() -> None:
    assert broker_credentials(settings()) is None
    creds = broker_credentials(settings(**{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                           "sasl.username": "u", "sasl.password": "p"}))
    assert (creds.username, creds.mechanism.value, creds.protocol.value) == ("u", "SCRAM-SHA-512", "SASL_SSL")
    plain = broker_credentials(settings(**{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN",
                                           "sasl.username": "u", "sasl.password": "p"}))
    assert plain.protocol.value == "SASL_PLAINTEXT"
    assert broker_credentials(settings(**{"security.protocol": "SSL"})).protocol.value == "SSL"
    with pytest.raises(SettingsError, match="ssl.keystore.location"):
        broker_credentials(settings(**{"security.protocol": "SSL", "ssl.keystore.location": "/k.p12"}))
    with pytest.raises(SettingsError, match="OAUTHBEARER"):
        broker_credentials(settings(**{"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}))


def test_msk_iam_maps_to_an_oauthbearer_token_provider() -> None:
    pytest.importorskip("aws_msk_iam_sasl_signer")
    creds = broker_credentials(Settings.from_env(environ={}, kafka_msk_iam_region="eu-central-1"))
    assert (creds.protocol.value, creds.mechanism.value) == ("SASL_SSL", "OAUTHBEARER")
    assert creds.oauth_cb.region == "eu-central-1" and creds.ssl_context is not None
